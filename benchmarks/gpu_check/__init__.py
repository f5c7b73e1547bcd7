"""One command that checks SmartCLIP on a GPU and measures what matters there, in under 8 minutes.

    python -m benchmarks.gpu_check --out runs/gpu_check                 # on a machine with a CUDA GPU
    python -m benchmarks.gpu_check --device cpu --quick --out runs/x    # tiny models (the test suite runs this)

Sections, in this order; each is timed, has its own time limit inside the overall ``--budget``,
and fails alone (a failure or a timeout is recorded and the next section runs):

    environment   versions, the GPU, which packages import
    cuda_tests    pytest tests/test_cuda.py --device cuda: the CUDA-marked tests
    device_tests  pytest -m device --device cuda: the suite's tests that take a device
    train_step    training-step throughput and peak memory: ViT-B/16 at micro-batch 256 and ViT-L/14
                  at 128, bf16, with and without gradient checkpointing, objective smartclip vs clip,
                  ShareGPT4V-like captions, a synthetic batch already in GPU memory; plus the paper's
                  global batch of 1024 on this one GPU through gradient caching
    loss          the modular loss at N = 1024, 4096, 16384 against the direct formula (where it fits)
                  and open_clip's ClipLoss: time and memory of forward + backward
    encode        images/s and texts/s (248 tokens) of the encoders retrieval and zero-shot use
    train_ddp     `smartclip train` under torchrun (one process, 20 steps, generated data), and two
                  ranks sharing the GPU over gloo, so DDP, gathering with gradients and no_sync run
                  on CUDA tensors (NCCL refuses two ranks on one GPU)
    suite         the rest of the test suite with --device cuda, in the time that is left

Random-initialised models and generated data: nothing is downloaded. Results go to ``--out``:
``gpu_check.json`` (rewritten whenever a section or a measurement finishes, so a killed run
leaves what it did), ``gpu_check.md`` (the same as tables) and ``gpu_check.log`` (the output of
every subprocess). See docs/performance.md.

Run from the repository root. The package's rooms: ``harness`` (the report, running a command
under a time limit, running the sections inside the budget), ``sections`` (what each section
does, and the sizes it uses), ``workers`` (the measurements that run in a worker process),
``rendering`` (the Markdown report) and ``__main__`` (the command line).
"""
from .harness import REPO, ROW, Report, Section, child_env, run_command, run_sections
from .sections import SECTIONS, plan, pytest_verdict, pytest_summary

__all__ = ["REPO", "ROW", "Report", "Section", "SECTIONS", "child_env", "plan", "pytest_summary", "pytest_verdict",
           "run_command", "run_sections"]
