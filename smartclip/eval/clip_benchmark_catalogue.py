"""CLIP_benchmark's zero-shot classification datasets, as data: for every id, the on-disk layout
its reader expects, the paths checked before it is called, where the set is published and the
modules its reader imports; the paper's Table 3 numbers; the metric descriptions results carry.

Nothing here imports CLIP_benchmark: the registry lists these sets without it installed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["CBDataset", "CLIP_BENCHMARK_DATASETS", "PAPER_TABLE3", "PAPER_ZEROSHOT", "PAPER_MODELS", "PAPER_SOURCE",
           "METRICS", "MULTILABEL_METRIC", "paper_row", "torchvision_folder", "wds_folder"]


@dataclass(frozen=True)
class CBDataset:
    """One CLIP_benchmark classification dataset, as data: its torchvision-layout root."""
    id: str
    layout: str                       # what CLIP_benchmark reads under the root
    required: Tuple[str, ...]         # paths under the root checked before CLIP_benchmark is called
    source: str                       # where the dataset is published
    needs: Tuple[str, ...] = ()       # Python modules its reader imports
    expected_images: Optional[int] = None  # the test split's size, where it is well known
    multilabel: bool = False
    class_folders: Optional[str] = None    # for folder-per-class readers: the folder holding the class folders


_VOC = ("VOCdevkit/VOC2007/ImageSets/Main/aeroplane_test.txt", "VOCdevkit/VOC2007/Annotations",
        "VOCdevkit/VOC2007/JPEGImages")
_VOC_LAYOUT = ("VOCdevkit/VOC2007/{ImageSets/Main/aeroplane_test.txt, Annotations/<id>.xml, JPEGImages/<id>.jpg} "
               "(VOCtest_06-Nov-2007.tar)")
_VOC_SOURCE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/ (VOCtest_06-Nov-2007.tar)"
_IMAGENET_SOURCE = "https://image-net.org/download (ILSVRC2012 validation images, sorted into class folders)"
_HENDRYCKS = "https://people.eecs.berkeley.edu/~hendrycks/{}.tar"

_TORCHVISION_LAYOUT = (
    CBDataset("cifar10", "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}: the whole python "
              "archive, whose files torchvision checks against their MD5 sums",
              ("cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"),
              "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version)", expected_images=10000),
    CBDataset("cifar100", "cifar-100-python/{train, test, meta}: the whole python archive (MD5-checked)",
              ("cifar-100-python/test", "cifar-100-python/meta"),
              "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-100 python version)", expected_images=10000),
    CBDataset("imagenet1k", "val/<wnid>/*.JPEG (1,000 WordNet-id folders, sorted = class index); with meta.bin or "
              "ILSVRC2012_devkit_t12.tar.gz beside val/ read as CLIP_benchmark's imagenet1k (torchvision ImageNet), "
              "without them as its imagenet1k-unverified (the same folders)", ("val",), _IMAGENET_SOURCE,
              expected_images=50000, class_folders="val"),
    CBDataset("imagenet1k-unverified", "val/<wnid>/* (1,000 WordNet-id folders, sorted = class index)", ("val",),
              _IMAGENET_SOURCE, expected_images=50000, class_folders="val"),
    CBDataset("imagenetv2", "ImageNetV2-matched-frequency/<class index 0..999>/*.jpeg (the archive's folder name "
              "imagenetv2-matched-frequency-format-val/ is accepted too)", (),
              "https://huggingface.co/datasets/vaishaal/ImageNetV2 (imagenetv2-matched-frequency.tar.gz)",
              expected_images=10000),
    CBDataset("imagenet_sketch", "<wnid>/*.JPEG (the 1,000 WordNet-id folders of ImageNet-Sketch.zip's sketch/)",
              ("",), "https://github.com/HaohanWang/ImageNet-Sketch (ImageNet-Sketch.zip)", class_folders=""),
    CBDataset("imagenet-a", "<wnid>/*.jpg (the 200 WordNet-id folders of imagenet-a.tar)", ("",),
              _HENDRYCKS.format("imagenet-a"), expected_images=7500, class_folders=""),
    CBDataset("imagenet-r", "<wnid>/*.jpg (the 200 WordNet-id folders of imagenet-r.tar)", ("",),
              _HENDRYCKS.format("imagenet-r"), expected_images=30000, class_folders=""),
    CBDataset("imagenet-o", "<wnid>/*.jpg (the 200 WordNet-id folders of imagenet-o.tar)", ("",),
              _HENDRYCKS.format("imagenet-o"), expected_images=2000, class_folders=""),
    CBDataset("objectnet", "folder_to_objectnet_label.json, objectnet_to_imagenet_1k.json, "
              "pytorch_to_imagenet_2012_id.json, imagenet_to_label_2012_v2 (objectnet-1.0/mappings/, copied to the "
              "root) and objectnet-1.0/images/<folder>/*",
              ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json", "pytorch_to_imagenet_2012_id.json",
               "imagenet_to_label_2012_v2", "objectnet-1.0/images"),
              "https://objectnet.dev/download.html (objectnet-1.0.zip)"),
    CBDataset("voc2007", _VOC_LAYOUT + "; one sample per object box, cropped", _VOC, _VOC_SOURCE),
    CBDataset("voc2007_multilabel", _VOC_LAYOUT + "; one sample per image, target = the classes of its boxes", _VOC,
              _VOC_SOURCE, expected_images=4952, multilabel=True),
    CBDataset("food101", "food-101/{meta/test.json, images/<class>/<id>.jpg}", ("food-101/meta/test.json",
              "food-101/images"), "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/ (food-101.tar.gz)"),
    CBDataset("sun397", "SUN397/{ClassName.txt, <letter>/<class>/sun_*.jpg}: the whole set (CLIP_benchmark uses no "
              "split)", ("SUN397/ClassName.txt",), "https://vision.princeton.edu/projects/2010/SUN/ (SUN397.tar.gz)"),
    CBDataset("cars", "stanford_cars/{devkit/cars_meta.mat, cars_test_annos_withlabels.mat, cars_test/*.jpg}",
              ("stanford_cars/devkit/cars_meta.mat", "stanford_cars/cars_test_annos_withlabels.mat",
               "stanford_cars/cars_test"), "https://ai.stanford.edu/~jkrause/cars/car_dataset.html", needs=("scipy",)),
    CBDataset("fgvc_aircraft", "fgvc-aircraft-2013b/data/{variants.txt, images_variant_test.txt, images/<id>.jpg}",
              ("fgvc-aircraft-2013b/data/variants.txt", "fgvc-aircraft-2013b/data/images_variant_test.txt",
               "fgvc-aircraft-2013b/data/images"),
              "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (fgvc-aircraft-2013b.tar.gz)",
              expected_images=3333),
    CBDataset("dtd", "dtd/dtd/{labels/test1.txt, images/<class>/*.jpg} (dtd-r1.0.1.tar.gz extracted into ROOT/dtd)",
              ("dtd/dtd/labels/test1.txt", "dtd/dtd/images"), "https://www.robots.ox.ac.uk/~vgg/data/dtd/"),
    CBDataset("pets", "oxford-iiit-pet/{annotations/test.txt, images/<name>.jpg}",
              ("oxford-iiit-pet/annotations/test.txt", "oxford-iiit-pet/images"),
              "https://www.robots.ox.ac.uk/~vgg/data/pets/ (images.tar.gz, annotations.tar.gz)"),
    CBDataset("caltech101", "caltech101/101_ObjectCategories/<class>/image_*.jpg (every image, no split)",
              ("caltech101/101_ObjectCategories",), "https://data.caltech.edu/records/mzrjq-6wc02"),
    CBDataset("flowers", "flowers-102/{jpg/image_*.jpg, imagelabels.mat, setid.mat} (the .mat files MD5-checked)",
              ("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"),
              "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/", needs=("scipy",)),
    CBDataset("mnist", "MNIST/raw/{train,t10k}-images-idx3-ubyte and {train,t10k}-labels-idx1-ubyte (uncompressed)",
              ("MNIST/raw/t10k-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte"),
              "http://yann.lecun.com/exdb/mnist/", expected_images=10000),
    CBDataset("stl10", "stl10_binary/{test_X.bin, test_y.bin, train_X.bin, train_y.bin, unlabeled_X.bin, "
              "class_names.txt, fold_indices.txt}: the whole binary archive (MD5-checked)",
              ("stl10_binary/test_X.bin", "stl10_binary/test_y.bin"), "https://cs.stanford.edu/~acoates/stl10/",
              expected_images=8000),
    CBDataset("eurosat", "eurosat/2750/<class>/*.jpg (EuroSAT.zip, RGB; every image, no split)", ("eurosat/2750",),
              "https://github.com/phelber/EuroSAT", class_folders="eurosat/2750"),
    CBDataset("gtsrb", "gtsrb/{GT-final_test.csv, GTSRB/Final_Test/Images/*.ppm}",
              ("gtsrb/GT-final_test.csv", "gtsrb/GTSRB/Final_Test/Images"),
              "https://benchmark.ini.rub.de/gtsrb_dataset.html (GTSRB_Final_Test_Images.zip, GTSRB_Final_Test_GT.zip)",
              expected_images=12630),
    CBDataset("country211", "country211/test/<ISO country code>/*.jpg", ("country211/test",),
              "https://github.com/openai/CLIP/blob/main/data/country211.md (country211.tgz)", expected_images=21100,
              class_folders="country211/test"),
    CBDataset("pcam", "pcam/camelyonpatch_level_2_split_test_{x,y}.h5 (uncompressed)",
              ("pcam/camelyonpatch_level_2_split_test_x.h5", "pcam/camelyonpatch_level_2_split_test_y.h5"),
              "https://github.com/basveeling/pcam", needs=("h5py",)),
    CBDataset("renderedsst2", "rendered-sst2/test/{negative,positive}/*.png", ("rendered-sst2/test",),
              "https://github.com/openai/CLIP/blob/main/data/rendered-sst2.md"),
    CBDataset("fer2013", "test/<emotion>/*.jpg (7 folders, angry ... surprise: the Kaggle msambare/fer2013 archive)",
              ("test",), "https://www.kaggle.com/datasets/msambare/fer2013", expected_images=7178,
              class_folders="test"),
)

# VTAB sets in CLIP_benchmark's collections, read from a TensorFlow Datasets data_dir through
# task_adaptation's VTAB splits; the value is the TFDS dataset folder.
_VTAB = {"caltech101": "caltech101", "cifar10": "cifar10", "cifar100": "cifar100", "clevr_count_all": "clevr",
         "clevr_closest_object_distance": "clevr", "diabetic_retinopathy": "diabetic_retinopathy_detection",
         "dmlab": "dmlab", "dsprites_label_orientation": "dsprites", "dsprites_label_x_position": "dsprites",
         "dtd": "dtd", "eurosat": "eurosat", "kitti_closest_vehicle_distance": "kitti",
         "flowers": "oxford_flowers102", "pets": "oxford_iiit_pet", "pcam": "patch_camelyon", "resisc45": "resisc45",
         "smallnorb_label_azimuth": "smallnorb", "smallnorb_label_elevation": "smallnorb", "svhn": "svhn_cropped"}

CLIP_BENCHMARK_DATASETS: Dict[str, CBDataset] = {d.id: d for d in _TORCHVISION_LAYOUT}
for _name, _tfds in _VTAB.items():
    CLIP_BENCHMARK_DATASETS[f"vtab/{_name}"] = CBDataset(
        f"vtab/{_name}", f"a TensorFlow Datasets data_dir holding {_tfds}/ (prepared with tensorflow_datasets; read "
        "through task_adaptation's VTAB splits)", (_tfds,), "https://github.com/google-research/task_adaptation",
        needs=("tensorflow_datasets", "task_adaptation"))

# SmartCLIP (CVPR 2025) Table 3: ViT-L/14, CLIP_benchmark, top-1 % (voc2007_multilabel: mAP %)
PAPER_TABLE3 = {  # id: (SmartCLIP, CLIP, Long-CLIP)
    "country211": (26.9, 31.8, 28.1), "fer2013": (58.6, 49.0, 57.8), "fgvc_aircraft": (30.4, 31.7, 30.6),
    "gtsrb": (52.4, 50.2, 48.9), "imagenet1k": (72.5, 75.3, 72.9), "imagenetv2": (66.6, 69.7, 66.9),
    "voc2007": (78.6, 78.3, 77.5), "voc2007_multilabel": (83.7, 79.0, 82.1), "sun397": (72.1, 67.5, 72.5)}
PAPER_ZEROSHOT = tuple(PAPER_TABLE3)
PAPER_MODELS = ("SmartCLIP ViT-L/14", "CLIP ViT-L/14", "Long-CLIP ViT-L/14")
PAPER_SOURCE = "SmartCLIP (CVPR 2025) Table 3: ViT-L/14, zero-shot with CLIP_benchmark"

def paper_row(dataset_id: str) -> Optional[dict]:
    """The paper's Table 3 numbers for a CLIP_benchmark id, as results carry them (None if absent)."""
    if dataset_id not in PAPER_TABLE3:
        return None
    metric = "mAP" if CLIP_BENCHMARK_DATASETS[dataset_id].multilabel else "top1"
    return {"source": PAPER_SOURCE, "metric": metric, **dict(zip(PAPER_MODELS, PAPER_TABLE3[dataset_id]))}


METRICS = ("top-1 and top-5 accuracy (ties count against the model; CLIP_benchmark's topk breaks them in kernel "
           "order), mean per-class recall (CLIP_benchmark's mean_per_class_recall)")
MULTILABEL_METRIC = "mAP: mean over classes of average precision (CLIP_benchmark's average_precision_per_class)"


def torchvision_folder(dataset_id: str) -> str:
    """Default folder under a data root: the id with '/' as '-' (CLIP_benchmark's ``dataset_cleaned``)."""
    return dataset_id.replace("/", "-")


def wds_folder(dataset_id: str) -> str:
    """Default folder under a data root: the name of the published set, ``wds_<id with / as ->``."""
    return "wds_" + dataset_id.replace("/", "-")
