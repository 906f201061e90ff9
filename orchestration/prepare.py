"""What every trial needs before the first one starts: the data directory (generated data for studies that ask
for it), every dataset loaded once (so a bad dataset file fails here), and the classifiers that judge
coherence, trained once if missing and sent to the trials."""
from __future__ import annotations

from pathlib import Path

from meme.data import get_dataset, resolve_data_dir
from meme.data.mnist_svhn import MNIST_FILES, SVHN_FILES
from meme.data.synthetic import write_synthetic_mnist_svhn
from meme.eval import CLASSIFIERS, ensure_classifiers
from meme.eval.evaluator import run_classifiers
from meme.models import TrainConfig
from orchestration import SWEEP_PROG as PROG
from orchestration.study import Study


def synthetic_root(study: Study, data_dir: str | None) -> Path:
    """Where a study that generates its data keeps it: <data dir>/synthetic/n<train>-<test>-s<seed>."""
    s = study.synthetic_data
    return resolve_data_dir(data_dir).resolve() / "synthetic" / f"n{s['n_train']}-{s['n_test']}-s{s['seed']}"


def data_dir_for(study: Study, data_dir: str | None) -> str:
    """The data dir every trial gets (nothing is written): a generated-data study's folder, else --data-dir,
    else the study's own."""
    if study.synthetic_data:
        return str(synthetic_root(study, data_dir))
    if data_dir:
        return str(Path(data_dir).expanduser().resolve())
    return str(study.base.get("data_dir", ""))


def prepare_data_dir(study: Study, root: str) -> None:
    """Generate a generated-data study's files into ``root`` (``data_dir_for``'s answer) when any is missing."""
    if not study.synthetic_data:
        return
    s, root = study.synthetic_data, Path(root)
    files = [root / "MNIST" / "raw" / f for pair in MNIST_FILES.values() for f in pair]
    files += [root / "SVHN" / SVHN_FILES[k] for k in ("train", "test")]
    if not all(f.exists() for f in files):
        print(f"{PROG}: generating the study's synthetic MNIST-format + SVHN-format data in {root}", flush=True)
        write_synthetic_mnist_svhn(root, n_train=s["n_train"], n_test=s["n_test"], seed=s["seed"])


def prepare_classifiers(study: Study, base_cfg: dict, progress: bool) -> dict:
    """Load (and so validate) every dataset of the study once, downloading it if needed, and the classifiers the
    evaluation needs (training them once if missing: the digit classifiers, or a dataset file's own); returns
    modality -> classifier module (on the CPU) for the trials."""
    datasets = {p.get("dataset", base_cfg["dataset"]) for p in study.points()}
    classifiers = {}
    for ds in sorted(datasets):
        cfg = TrainConfig.from_dict({**base_cfg, "dataset": ds})
        spec = get_dataset(cfg.dataset)
        for split in ("train", "test"):
            spec.load(cfg, split)
        names = [n for n in spec.names if n in CLASSIFIERS]
        if names and spec.file is None:
            ensure_classifiers(names, data_dir=cfg.data_dir, progress=progress, download=cfg.download)
        for n, clf in run_classifiers(cfg, "cpu", progress=progress).items():
            classifiers[n] = clf
    return classifiers
