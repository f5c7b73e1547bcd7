"""The measurements that run in a worker process (one per job; in-process with ``--quick``). Each
takes its parameters and ``emit``, which it calls with one result row at a time."""
from __future__ import annotations

import statistics
import sys
import time
from typing import Callable


def _measure(row: dict, device, measure: Callable[[], None]) -> None:
    """Run one measurement, which writes its figures into ``row``; a failure (an out-of-memory,
    say) is recorded in ``row["error"]`` so that the other measurements still run. The
    measurement's tensors die with its frame, then the GPU's cache is emptied."""
    import torch
    try:
        measure()
    except Exception as e:  # noqa: BLE001 - recorded; the next configuration, precision or model still runs
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def worker_train_step(params: dict, emit: Callable[[dict], None]):
    """Training-step throughput of one model: every configuration in this process, one model."""
    import torch
    import smartclip
    from benchmarks.bench_train import caption_tokens, time_step

    device = torch.device(params["device"])
    built = time.perf_counter()
    torch.manual_seed(0)
    model = smartclip.create_model(params["model"], device=device).train()
    build_s = time.perf_counter() - built
    tokenizer = smartclip.get_tokenizer(model)
    mb, steps = params["micro_batch"], params["steps"]
    paper = params["paper_batch"]
    ckpt = params["grad_ckpt_default"]
    configs = [  # the most important first: a timeout loses the last ones
        ("smartclip", False, "long", mb, mb), ("clip", False, "long", mb, mb),
        ("smartclip", True, "long", mb, mb), ("clip", True, "long", mb, mb),
        ("smartclip", ckpt, "long", paper, mb),  # the paper's global batch on this GPU, gradient caching
        ("smartclip", False, "short", mb, mb), ("clip", False, "short", mb, mb),
    ]
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(params["precision"])
    autocast = (lambda: torch.autocast(device.type, dtype=half)) if half else None
    for objective, checkpointing, captions, batch, micro in configs:
        row = {"model": params["model"], "objective": objective, "grad_checkpointing": checkpointing,
               "captions": captions, "batch": batch, "micro_batch": micro, "precision": params["precision"],
               "build_s": round(build_s, 1)}

        def step():
            model.set_grad_checkpointing(checkpointing)
            tokens = caption_tokens(tokenizer, batch, captions).to(device)
            images = torch.randn(batch, 3, *model.image_size, device=device)
            r = time_step(model, objective, images, tokens, micro if micro < batch else None,
                          steps if batch == micro else max(1, steps // 2), autocast=autocast)
            seconds = statistics.median(r["times"])
            cuda = device.type == "cuda"  # a CPU's peak resident set is not per configuration here
            row.update(s_per_step=seconds, s_per_step_min=min(r["times"]), samples_per_s=batch / seconds,
                       text_positions=r["text_positions"], peak_step_gib=r["peak_mib"] / 1024 if cuda else None,
                       peak_gib=r["peak_total_mib"] / 1024 if cuda else None)
        _measure(row, device, step)
        emit(row)


def worker_loss(params: dict, emit: Callable[[dict], None]):
    """The modular loss against the direct formula and open_clip's ClipLoss (bench_core's cases)."""
    import torch
    from benchmarks.bench_core import run_loss_case

    cuda = params["device"].startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(params["device"]).index or 0)  # bench_core uses the current device
    for d in params["dims"]:
        for n in params["sizes"]:
            for method in ("clip", "ours", "direct"):
                for tf32 in ((False, True) if cuda and method != "direct" else (False,)):
                    row = {"method": method, "N": n, "d": d, "tf32": tf32}
                    need = 6 * n * n * d * 4  # the direct formula keeps about six [N, N, d] fp32 tensors
                    free = torch.cuda.mem_get_info()[0] if cuda else None
                    if method == "direct" and cuda and need > 0.8 * free:
                        row["note"] = f"not run: needs about {need / 2 ** 30:.0f} GiB, {free / 2 ** 30:.0f} GiB free"
                        emit(row)
                        continue
                    try:
                        torch.backends.cuda.matmul.allow_tf32 = tf32
                        r = run_loss_case(method, n, d, params["repeats"], "cuda" if cuda else "cpu")
                        row.update(seconds=r["seconds"], peak_mib=r["peak_mb"] if cuda else None)
                    except Exception as e:  # noqa: BLE001 - out of memory: recorded, next case
                        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                    finally:
                        torch.backends.cuda.matmul.allow_tf32 = False
                        if cuda:
                            torch.cuda.empty_cache()
                    emit(row)


def worker_encode(params: dict, emit: Callable[[dict], None]):
    """Encoding throughput with no loader: images/s and texts/s at the full 248 positions."""
    import torch
    import smartclip

    device = torch.device(params["device"])
    batch, repeats = params["batch"], params["repeats"]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def rate(fn, n):
        fn()
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return n / statistics.median(times)

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    for name in params["models"]:
        torch.manual_seed(0)
        model = smartclip.create_model(name, device=device).eval()  # built once, cast per precision
        eot = smartclip.get_tokenizer(model).eot_token_id
        for precision in params["precisions"]:
            row = {"model": name, "precision": precision, "batch": batch}

            def rates():
                model.to(dtypes[precision])
                images = torch.randn(batch, 3, *model.image_size, device=device, dtype=dtypes[precision])
                tokens = torch.randint(1, eot - 1, (batch, model.context_length), device=device)
                tokens[:, -1] = eot  # every text fills all 248 positions: nothing to trim
                with torch.no_grad():
                    row["images_per_s"] = rate(lambda: model.encode_image(images), batch)
                    row["texts_per_s"] = rate(lambda: model.encode_text(tokens), batch)
                row["text_positions"] = model.context_length
            _measure(row, device, rates)
            emit(row)
        model = None


def worker_gloo_train(params: dict, emit: Callable[[dict], None]):
    """One rank of `smartclip train` in a process group this worker starts on gloo (torchrun sets
    RANK, WORLD_SIZE and the rendezvous address); the training loop joins the existing group."""
    import torch.distributed as dist
    from smartclip.cli import main
    dist.init_process_group("gloo")
    try:
        code = main(["train", *params["overrides"]])
    finally:
        dist.destroy_process_group()
    sys.exit(code)


WORKERS = {"train_step": worker_train_step, "loss": worker_loss, "encode": worker_encode,
           "gloo_train": worker_gloo_train}
