"""MONAI Label 0.8.5 serves and trains the segmentation bundle (real server, nothing mocked).

One module-scoped server: phantom data are written, a small segmentation model is trained with the
bundle's own train.json, the bundle folder (a copy of ``bundles/segmentation`` + ``models/model.pt``)
is placed in a copy of ``apps/monailabel_bus`` (MONAI Label's own ``monaibundle`` sample app, loaded
from the wheel, with a 4xx answer for requests that name no readable image), and ``monailabel start_server`` runs
on 127.0.0.1 with a studies folder of phantom PNGs (greyscale, RGB and a differently sized one, all
non-square). Nothing is downloaded (the bundle is local, ``zoo_source`` is not ``monaihosting``).

Skipped when ``monailabel`` is not importable (the main test venv).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("monailabel", reason="MONAI Label is not installed (pip install -e '.[label]' in its own venv)")

import numpy as np  # noqa: E402
import requests  # noqa: E402
from PIL import Image  # noqa: E402

import monailabel  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "segmentation"
MODEL = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["name"]  # bus_tumor_segmentation
HOST = "127.0.0.1"
START_TIMEOUT_S = 120
TRAIN_TIMEOUT_S = 120
INITIAL_EPOCHS = 150  # ~15 s on one CPU thread; validation Dice ~0.8 on the phantom

pytestmark = pytest.mark.timeout(420)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _sample_app() -> Path:
    """The ``monaibundle`` sample app shipped with the monailabel wheel (``<prefix>/monailabel/sample-apps``)."""
    candidates = [
        Path(sys.prefix) / "monailabel" / "sample-apps" / "monaibundle",
        Path(monailabel.__file__).resolve().parent.parent / "sample-apps" / "monaibundle",
    ]
    for c in candidates:
        if (c / "main.py").is_file():
            return c
    pytest.skip(f"monaibundle sample app not found in {candidates}")


def _run(cmd: list[str], cwd: Path, log: Path) -> None:
    with log.open("w") as fp:
        proc = subprocess.run(cmd, cwd=cwd, env=_env(), stdout=fp, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0, f"{cmd} failed:\n{log.read_text()[-4000:]}"


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    denom = pred.sum() + truth.sum()
    return float(2 * (pred & truth).sum() / denom) if denom else 1.0


class Server:
    def __init__(self, url: str, work: Path, studies: Path, truths: dict[str, np.ndarray], log: Path):
        self.url, self.work, self.studies, self.truths, self.log = url, work, studies, truths, log

    def tail(self, n: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-n:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from busmonai.data.phantom import write_phantom_dataset

    work = tmp_path_factory.mktemp("monailabel")
    raw = work / "raw"
    write_phantom_dataset(raw, n=16, seed=0, height=96, width=128, progress=False)

    # 1. a small model trained with the bundle's own train.json (default UNet, so that MONAI Label's
    #    training below can load models/model.pt into the network train.json builds)
    _run([sys.executable, "-m", "busmonai.cli", "prepare", "busi", "--root", str(raw), "--out", str(work / "prep"),
          "--size", "64"], work, work / "prepare.log")
    _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "train.json"),
          "--datalist", str(work / "prep" / "datalist.json"), "--output_dir", str(work / "runs" / "seg"),
          "--max_epochs", str(INITIAL_EPOCHS)], work, work / "train.log")
    checkpoint = work / "runs" / "seg" / "model.pt"
    assert checkpoint.is_file()

    # 2. the app: a copy of monaibundle with the bundle folder in app/model/<name>/
    app = work / "app"
    _sample_app()  # skip if the wheel has no sample app
    shutil.copytree(REPO / "apps" / "monailabel_bus", app, ignore=shutil.ignore_patterns("__pycache__"))
    bundle = app / "model" / MODEL
    _run([sys.executable, "-m", "busmonai.cli", "export", "segmentation", "--run", str(work / "runs" / "seg"),
          "--out", str(bundle)], work, work / "export.log")
    assert (bundle / "models" / "model.pt").is_file()

    # 3. studies: phantom PNGs (96 x 128, i.e. H != W), one converted to RGB, one resized to 110 x 150
    studies = work / "studies"
    studies.mkdir()
    pairs = sorted(p for p in raw.glob("*/*.png") if "_mask" not in p.name and p.parent.name != "normal")
    truths: dict[str, np.ndarray] = {}
    for i, image_path in enumerate(pairs[:6]):
        image = Image.open(image_path)
        masks = [np.array(Image.open(m).convert("L")) > 0 for m in image_path.parent.glob(f"{image_path.stem}_mask*.png")]
        mask = Image.fromarray((np.any(masks, axis=0) * 255).astype(np.uint8))  # BUSI: several masks = one lesion set
        if i == 1:
            image = image.convert("RGB")
        if i == 2:
            image = image.resize((150, 110), Image.BILINEAR)
            mask = mask.resize((150, 110), Image.NEAREST)
        image_id = f"case{i:02d}"
        image.save(studies / f"{image_id}.png")
        truths[image_id] = np.array(mask) > 0
    (work / "masks").mkdir()
    for image_id, truth in truths.items():
        Image.fromarray((truth * 255).astype(np.uint8)).save(work / "masks" / f"{image_id}.png")

    # 4. the server, 127.0.0.1 only, in its own process group so teardown ends everything it started
    port = _free_port()
    log = work / "server.log"
    env = _env()
    env["MONAI_LABEL_SESSION_PATH"] = str(work / "sessions")
    cmd = ["monailabel", "start_server", "--app", str(app), "--studies", str(studies),
           "--conf", "models", MODEL, "--conf", "zoo_source", "local", "--conf", "sam2", "false",
           "--conf", "preload", "false", "--host", HOST, "--port", str(port)]
    with log.open("w") as fp:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=fp, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{HOST}:{port}"
    srv = Server(url, work, studies, truths, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"server exited with {proc.returncode}:\n{srv.tail()}"
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"no /info/ after {START_TIMEOUT_S} s:\n{srv.tail()}"
            time.sleep(1)
        yield srv
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


def test_info_lists_bundle_model(server: Server) -> None:
    info = requests.get(f"{server.url}/info/", timeout=10).json()
    assert MODEL in info["models"], info["models"].keys()
    model = info["models"][MODEL]
    assert model["type"] == "segmentation"
    assert model["dimension"] == 2
    assert model["labels"] == {"tumor": 1}
    assert MODEL in info["trainers"]
    assert info["datastore"]["total"] == len(server.truths)


@pytest.mark.parametrize("image_id", ["case00", "case01", "case02", "case03"])
def test_infer_returns_binary_mask_of_image_size(server: Server, image_id: str) -> None:
    r = requests.post(f"{server.url}/infer/{MODEL}", params={"image": image_id, "output": "image"}, timeout=60)
    assert r.status_code == 200, f"{r.status_code} {r.text[:500]}\n{server.tail()}"
    out = server.work / f"pred_{image_id}.png"
    out.write_bytes(r.content)
    pred = np.array(Image.open(out))
    truth = server.truths[image_id]
    height, width = Image.open(server.studies / f"{image_id}.png").size[::-1]
    assert pred.shape == (height, width) == truth.shape
    assert set(np.unique(pred)) <= {0, 1}
    dice = _dice(pred > 0, truth)
    assert dice > 0.3, f"{image_id}: Dice {dice:.3f} against the phantom's true mask"


def test_train_from_monai_label(server: Server) -> None:
    for image_id in server.truths:
        with (server.work / "masks" / f"{image_id}.png").open("rb") as fp:
            r = requests.put(f"{server.url}/datastore/label", params={"image": image_id, "tag": "final"},
                             files={"label": (f"{image_id}.png", fp, "image/png")}, timeout=30)
        assert r.status_code == 200, r.text
    assert requests.get(f"{server.url}/info/", timeout=10).json()["datastore"]["completed"] == len(server.truths)

    request = {"max_epochs": 1, "device": "cpu", "multi_gpu": False, "val_split": 0.2}
    r = requests.post(f"{server.url}/train/{MODEL}", json=request, timeout=30)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while True:
        status = requests.get(f"{server.url}/train/", params={"check_if_running": "false"}, timeout=10).json()
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        assert time.monotonic() < deadline, f"training still running after {TRAIN_TIMEOUT_S} s"
        time.sleep(1)
    assert status["status"] == "DONE", "\n".join(status.get("details", [])[-40:])
    # train.json's output_dir is relative: the server's working directory
    assert (server.work / "runs" / "segmentation" / "model.pt").is_file()
    assert requests.get(f"{server.url}/info/", timeout=10).status_code == 200


def test_bad_input_is_an_error_without_a_trace(server: Server) -> None:
    # a study that is not an image, added through the datastore API
    r = requests.put(f"{server.url}/datastore/", params={"image": "notes"},
                     files={"file": ("notes.txt", b"not an image", "text/plain")}, timeout=30)
    assert r.status_code == 200, r.text
    for image_id in ("notes", "does_not_exist"):
        r = requests.post(f"{server.url}/infer/{MODEL}", params={"image": image_id}, timeout=60)
        assert r.status_code >= 400, r.status_code
        assert r.text and "Traceback" not in r.text and 'File "' not in r.text, r.text[:500]
    r = requests.get(f"{server.url}/datastore/image", params={"image": "does_not_exist"}, timeout=10)
    assert r.status_code == 404 and "not found" in r.json()["detail"].lower(), r.text
    # the server survives and still answers
    r = requests.post(f"{server.url}/infer/{MODEL}", params={"image": "case00", "output": "image"}, timeout=60)
    assert r.status_code == 200


@pytest.mark.parametrize(("image_id", "status"), [("does_not_exist", 404), ("notes", 415)])
def test_infer_without_a_readable_image_is_a_client_error(server: Server, image_id: str, status: int) -> None:
    requests.put(f"{server.url}/datastore/", params={"image": "notes"},
                 files={"file": ("notes.txt", b"not an image", "text/plain")}, timeout=30)
    r = requests.post(f"{server.url}/infer/{MODEL}", params={"image": image_id}, timeout=60)
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert image_id in r.json()["detail"]
