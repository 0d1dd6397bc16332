"""``geoplant kaggle`` (publish, push, pull, submit) against a stand-in of the Kaggle API.

Commands that talk to Kaggle run in a subprocess with the real ``kaggle`` client: with
``KAGGLE_API_ENVIRONMENT=LOCALHOST`` kaggle 2.x (kagglesdk) POSTs JSON to
``http://localhost/api/v1/<service>/<Method>``, and ``HTTP_PROXY`` sends those requests, the
blob uploads (PUT to the ``createUrl`` the API hands out) and the output downloads to the
``KaggleStandIn`` below, on 127.0.0.1. Dry runs and the checks that fail before any request
run in-process, with no credentials and a socket guard.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from local_http import Handler, LocalServer, offline_guard

from geoplant import cli
from geoplant.errors import GeoplantError
from geoplant.kaggle import competition_test_ids, wait_for_kernel
from geoplant.layouts import PA_TEST_COLUMNS

USER, KEY = "alice", "s3cret"
KERNEL = f"{USER}/geoplant-env-nn"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Refuse any connection that is not to 127.0.0.1; isolate from the user's Kaggle setup."""
    offline_guard(monkeypatch)
    for var in [v for v in os.environ if v.startswith("KAGGLE_") or v.lower().endswith("_proxy")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.chdir(tmp_path)


# ------------------------------------------------------------------------------- the stand-in


class _Handler(Handler):
    """``local_http.Handler`` plus PUT (the blob uploads of the kaggle client)."""

    def do_PUT(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.owner.handle_put(self, self.owner.resolve(self.path), body)  # type: ignore[attr-defined]


class KaggleStandIn(LocalServer):
    """The Kaggle API routes the kit uses, with state: datasets (ref -> owner), uploaded blobs,
    kernels and the states their runs go through. Every POST is logged with its method name
    (``rpc``), JSON body, raw target and Authorization header."""

    def __init__(self) -> None:
        super().__init__(headers={"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"})
        self.httpd.RequestHandlerClass = _Handler
        self.datasets: dict[str, str] = {}  # ref -> owner
        self.blobs: dict[str, dict[str, Any]] = {}  # token -> name, length, body
        self.kernel_states: list[tuple[str, str]] = [("COMPLETE", "")]
        self.outputs: dict[str, bytes] = {}  # kernel output file name -> content
        self.create_error = ""

    # -- plumbing

    def calls(self, rpc: str) -> list[dict[str, Any]]:
        """The JSON bodies of the POSTs to one API method, in order."""
        return [e["body"] for e in self.log if e.get("rpc") == rpc]

    def rpcs(self) -> list[str]:
        return [e["rpc"] for e in self.log if "rpc" in e]

    def handle_post(self, handler: Handler, path: str, body: bytes) -> None:
        request = json.loads(body or b"{}")
        rpc = path.rsplit("/", 1)[-1]
        self.log.append({"method": "POST", "path": path, "rpc": rpc, "body": request,
                         "raw": handler.path, "auth": handler.headers.get("Authorization")})
        route = getattr(self, f"_{rpc}", None)
        status, answer = route(request) if route else (404, _err(404, f"no route {path}"))
        handler.reply(status, json.dumps(answer).encode(), "application/json")

    def handle_put(self, handler: Handler, path: str, body: bytes) -> None:
        token = path.rsplit("/", 1)[-1]
        self.log.append({"method": "PUT", "path": path, "raw": handler.path, "bytes": len(body)})
        if token not in self.blobs:
            handler.reply(404, b"no such upload")
            return
        self.blobs[token]["body"] = body
        handler.reply(200, b"{}", "application/json")

    def _blob(self, name: str, length: int) -> dict[str, Any]:
        token = f"blob{len(self.blobs)}"
        self.blobs[token] = {"name": name, "length": length, "body": None}
        return {"token": token, "createUrl": f"http://localhost/upload/{token}"}

    def uploaded(self) -> dict[str, bytes]:
        """Uploaded blobs by file name."""
        return {b["name"]: b["body"] for b in self.blobs.values() if b["body"] is not None}

    # -- API methods (kagglesdk service methods, JSON field names)

    def _GetDatasetStatus(self, r: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        ref = f"{r['ownerSlug']}/{r['datasetSlug']}"
        return (200, {"status": "READY"}) if ref in self.datasets else (
            404, _err(404, f"Dataset {ref} not found"))

    def _StartBlobUpload(self, r: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, self._blob(r["name"], r["contentLength"])

    def _CreateDataset(self, r: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        ref = f"{r['ownerSlug']}/{r['slug']}"
        if self.create_error:
            return 200, {"status": "error", "error": self.create_error}
        self.datasets[ref] = USER
        return 200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"}

    def _CreateDatasetVersion(self, r: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        ref = f"{r['ownerSlug']}/{r['datasetSlug']}"
        if self.datasets.get(ref) != USER:
            return 403, _err(403, "Permission 'datasets.createVersion' was denied")
        return 200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"}

    def _SaveKernel(self, r: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, {"ref": f"/code/{r['slug']}", "url": f"https://www.kaggle.com/code/{r['slug']}",
                     "versionNumber": 1}

    def _GetKernelSessionStatus(self, r: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        state, message = (self.kernel_states.pop(0) if len(self.kernel_states) > 1
                          else self.kernel_states[0])
        return 200, {"status": state, "failureMessage": message}

    def _ListKernelSessionOutput(self, r: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        for name, data in self.outputs.items():
            self.files[f"/out/{name}"] = data
        files = [{"url": f"http://localhost/out/{n}", "fileName": n} for n in self.outputs]
        return 200, {"files": files, "log": '[{"data": "done"}]'}

    def _StartSubmissionUpload(self, r: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, self._blob(r["fileName"], r["contentLength"])

    def _CreateSubmission(self, r: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, {"message": "Successfully submitted to GeoLifeCLEF 2024", "ref": 4242}


def _err(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}


@pytest.fixture
def server() -> Iterator[KaggleStandIn]:
    srv = KaggleStandIn()
    yield srv
    srv.close()


def kaggle(server: KaggleStandIn, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``geoplant kaggle ARGS`` in a subprocess whose kaggle client talks to ``server``."""
    home, tmp = tmp_path / "kaggle-home", tmp_path / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KAGGLE_") and not k.lower().endswith("_proxy")}
    env |= {  # kaggle 2.x with LOCALHOST calls http://localhost/api/v1/...: proxy it to us
        "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "TMPDIR": str(tmp),
        "KAGGLE_API_ENVIRONMENT": "LOCALHOST", "KAGGLE_USERNAME": USER, "KAGGLE_KEY": KEY,
        "HTTP_PROXY": server.url, "http_proxy": server.url, "HTTPS_PROXY": server.url,
        "https_proxy": server.url, "NO_PROXY": "", "no_proxy": "",
    }
    cmd = [sys.executable, "-m", "geoplant.cli", "kaggle", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    # Everything went to the stand-in, as proxied requests for the LOCALHOST endpoint.
    assert all(e["raw"].startswith("http://localhost/") for e in server.log if "raw" in e)
    basic = "Basic " + base64.b64encode(f"{USER}:{KEY}".encode()).decode()
    assert all(e["auth"] == basic for e in server.log if e["method"] == "POST")
    return proc


def one_line_error(proc: subprocess.CompletedProcess[str] | tuple[int, str]) -> str:
    """The CLI failed with exit code 2 and a single line on stderr, no traceback."""
    code, err = (proc.returncode, proc.stderr) if not isinstance(proc, tuple) else proc
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("geoplant kaggle: error: "), err
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------------------- fixtures


def make_store(root: Path, *, raw_root: Path | None = None) -> Path:
    """A small store folder: what publish reads (manifest) and uploads (files, folders)."""
    store = root / "store"
    (store / "records").mkdir(parents=True)
    (store / "records" / "pa_train.parquet").write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1")
    zarr = store / "cubes" / "pa_train.zarr"
    (zarr / "sentinel2" / "c" / "0").mkdir(parents=True)
    (zarr / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    (zarr / "sentinel2" / "c" / "0" / "0").write_bytes(b"\x01" * 300)
    (store / "species.parquet").write_bytes(b"PAR1species")
    (store / "_build").mkdir()  # build state: never uploaded
    (store / "_build" / "done.json").write_text("{}")
    (store / ".lock").write_text("")
    manifest = {
        "format": "geoplant-store/1", "created_by": "geoplant 0.1.0", "layout": "glc24",
        "raw_root": str(raw_root or root / "raw"), "splits": ["po_train", "pa_train", "pa_test"],
        "modalities": {"pa_train": ["sentinel2", "env"]},
        "counts": {"pa_train_surveys": 950, "pa_test_surveys": 50, "species": 100},
        "skipped": {"total": 3, "items": []},
        "sources": [{"path": "GLC24_PA_metadata_test.csv", "kind": "file", "bytes": 2800,
                     "sha256": "b1780f8a1fce" + "0" * 52}],
        "versions": {"geoplant": "0.1.0", "zarr": "3.1.6"},
    }
    (store / "manifest.json").write_text(json.dumps(manifest))
    return store


def make_raw(root: Path, survey_ids: list[int]) -> Path:
    """A glc24 raw release root holding only the PA test metadata."""
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rows = [",".join(PA_TEST_COLUMNS)] + [
        f"{10 + i / 10},{45 + i / 10},2021,5.0,100.0,ATLANTIC,France,{sid}"
        for i, sid in enumerate(survey_ids)]
    (raw / "GLC24_PA_metadata_test.csv").write_text("\n".join(rows) + "\n")
    return raw


def write_submission(path: Path, rows: dict[int, str]) -> Path:
    path.write_text("surveyId,predictions\n" + "".join(f"{s},{p}\n" for s, p in rows.items()))
    return path


# ------------------------------------------------------------------------------- publish


def test_publish_dry_run_writes_metadata_and_data_card(tmp_path: Path, capsys) -> None:
    store = make_store(tmp_path)
    code = cli.main(["kaggle", "publish", str(store), "--dataset", "me/x", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0, out
    staging = tmp_path / "store.kaggle"
    meta = json.loads((staging / "dataset-metadata.json").read_text())
    assert set(meta) == {"title", "subtitle", "description", "id", "licenses", "keywords"}
    assert meta["id"] == "me/x" and meta["title"] == "GeoPlant glc24 store"
    assert 20 <= len(meta["subtitle"]) <= 80
    assert meta["licenses"] == [{"name": "other"}]  # MIT is not in Kaggle's licence list
    assert "plants" in meta["keywords"]
    card = (staging / "README.md").read_text()
    assert meta["description"] == card
    for text in ('Picek et al., "GeoPlant: Spatial Plant Species Prediction Dataset", NeurIPS '
                 "2024 Datasets & Benchmarks, arXiv:2408.13928", "@inproceedings",
                 'geoplant.open_store("/kaggle/input/x")', "| pa_train_surveys | 950 |",
                 "European Vegetation Archive", "GBIF", "`GLC24_PA_metadata_test.csv`",
                 "skipped at build: 3", "**MIT**", "| `cubes/` |", "| `species.parquet` |"):
        assert text in card, text
    assert "synthetic" not in card.lower()
    # The store's entries are linked, build state and hidden files are not.
    linked = sorted(p.name for p in staging.iterdir() if p.is_symlink())
    assert linked == ["cubes", "manifest.json", "records", "species.parquet"]
    assert (staging / "cubes").resolve() == (store / "cubes").resolve()
    assert "cubes/" in out and "cubes.zip" in out and "would upload" in out
    assert "dataset_create_new" in out and "dataset_create_version" in out
    assert "6-50 characters" in out  # 'x' is too short for a new dataset: said, not fatal

    # A rerun refreshes the staging folder; a synthetic store says so.
    (tmp_path / "raw" / "truth").mkdir(parents=True)
    assert cli.main(["kaggle", "publish", str(store), "--dataset", "me/x", "--dry-run"]) == 0
    card = (staging / "README.md").read_text()
    assert "**synthetic**" in card and "stand-ins" in card
    assert json.loads((staging / "dataset-metadata.json").read_text())["title"] == (
        "GeoPlant synthetic glc24 store")


def test_publish_rejects_bad_names_in_one_line(tmp_path: Path, capsys) -> None:
    store = make_store(tmp_path)
    for args, needle in [
        (["--dataset", "no-owner-slug"], "is not OWNER/SLUG"),
        (["--dataset", "me/Bad_Slug"], "lowercase letters"),
        (["--dataset", "me/geoplant-x", "--title", "x" * 51], "6-50"),
        (["--dataset", "me/geoplant-x", "--licence", "MIT"], "not a Kaggle dataset licence"),
    ]:
        code = cli.main(["kaggle", "publish", str(store), *args, "--dry-run"])
        assert needle in one_line_error((code, capsys.readouterr().err))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    code = cli.main(["kaggle", "publish", str(store), "--dataset", "me/geoplant-x",
                     "--staging", str(tmp_path / "other"), "--dry-run"])
    err = one_line_error((code, capsys.readouterr().err))
    assert "keep.txt" in err and "empty --staging" in err


def test_missing_credentials_is_one_line_error(tmp_path: Path, capsys) -> None:
    store = make_store(tmp_path)
    raw = make_raw(tmp_path, [1, 2])
    sub = write_submission(tmp_path / "sub.csv", {1: "3", 2: "4 5"})
    for args in (["publish", str(store), "--dataset", "alice/geoplant-test"],
                 ["push", "env-nn", "--dataset", "alice/geoplant-test"],
                 ["pull", KERNEL, "--out", str(tmp_path / "out")],
                 ["submit", str(sub), "--raw", str(raw)]):
        code = cli.main(["kaggle", *args])
        err = one_line_error((code, capsys.readouterr().err))
        assert "Kaggle credentials not found" in err
        assert "KAGGLE_USERNAME" in err and "kaggle.json" in err


def test_publish_creates_then_versions_through_the_real_client(
        server: KaggleStandIn, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    proc = kaggle(server, tmp_path, "publish", str(store), "--dataset", "alice/geoplant-test",
                  "--title", "GeoPlant test store", "--public")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # the client's own prints are kept quiet
    assert "created alice/geoplant-test: https://www.kaggle.com/datasets/alice/geoplant-test" \
        in proc.stdout
    assert server.rpcs()[0] == "GetDatasetStatus" and server.rpcs()[-1] == "CreateDataset"
    uploaded = server.uploaded()
    assert sorted(uploaded) == ["README.md", "cubes.zip", "manifest.json", "records.zip",
                                "species.parquet"]  # no metadata file, no _build, no .lock
    assert uploaded["species.parquet"] == b"PAR1species"
    with zipfile.ZipFile(io.BytesIO(uploaded["cubes.zip"])) as zf:
        assert sorted(zf.namelist()) == ["pa_train.zarr/sentinel2/c/0/0",
                                         "pa_train.zarr/zarr.json"]
    (create,) = server.calls("CreateDataset")
    assert create["ownerSlug"] == "alice" and create["slug"] == "geoplant-test"
    assert create["title"] == "GeoPlant test store" and create["licenseName"] == "other"
    assert create.get("isPrivate", False) is False  # --public (defaults are not sent)
    assert "plants" in create["categoryIds"]
    assert create["subtitle"] and "arXiv:2408.13928" in create["description"]
    tokens = {f["token"] for f in create["files"]}
    assert tokens == {t for t, b in server.blobs.items() if b["body"] is not None}
    assert uploaded["README.md"].decode() == create["description"]

    # Second run: the dataset exists -> a new version, with notes.
    server.log.clear()
    proc = kaggle(server, tmp_path, "publish", str(store), "--dataset", "alice/geoplant-test",
                  "--notes", "rebuilt with more surveys")
    assert proc.returncode == 0, proc.stderr
    assert "new version of alice/geoplant-test" in proc.stdout
    assert "CreateDataset" not in server.rpcs()
    (version,) = server.calls("CreateDatasetVersion")
    assert version["ownerSlug"] == "alice" and version["datasetSlug"] == "geoplant-test"
    assert version["body"]["versionNotes"] == "rebuilt with more surveys"
    assert len(version["body"]["files"]) == 5


def test_publish_to_a_dataset_of_someone_else(server: KaggleStandIn, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    server.datasets["bob/geoplant-store"] = "bob"
    proc = kaggle(server, tmp_path, "publish", str(store), "--dataset", "bob/geoplant-store")
    err = one_line_error(proc)
    assert "bob/geoplant-store" in err and "HTTP 403" in err
    assert "belongs to someone else" in err and "--dataset YOU/SLUG" in err
    assert "CreateDataset" not in server.rpcs()


def test_publish_create_refused(server: KaggleStandIn, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    server.create_error = "The requested slug is already in use by another dataset."
    proc = kaggle(server, tmp_path, "publish", str(store), "--dataset", "alice/geoplant-test")
    err = one_line_error(proc)
    assert "Kaggle refused to create alice/geoplant-test" in err
    assert "already in use" in err and "choose another slug" in err
    assert str(tmp_path / "store.kaggle") in err


# ------------------------------------------------------------------------------- push, pull


def test_push_dry_run_writes_notebook_and_kernel_metadata(
        tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "carol")  # the kernel goes under the user's name
    staging = tmp_path / "k"
    code = cli.main(["kaggle", "push", "env-nn", "--dataset", "alice/geoplant-test", "--gpu",
                     "-p", "epochs", "2", "-p", "lr", "0.01", "--kernel-source", "carol/util",
                     "--staging", str(staging), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0, out
    meta = json.loads((staging / "kernel-metadata.json").read_text())
    assert meta == {
        "id": "carol/geoplant-env-nn", "title": "geoplant env nn",
        "code_file": "geoplant-env-nn.ipynb", "language": "python", "kernel_type": "notebook",
        "is_private": True, "enable_gpu": True, "enable_internet": False,
        "dataset_sources": ["alice/geoplant-test"], "competition_sources": ["geolifeclef-2024"],
        "kernel_sources": ["carol/util"]}
    nb = json.loads((staging / "geoplant-env-nn.ipynb").read_text())
    tags = [c["metadata"].get("tags", []) for c in nb["cells"]]
    i = tags.index(["injected-parameters"])
    assert tags[i - 1] == ["parameters"]  # papermill puts it right after the parameters cell
    injected = "".join(nb["cells"][i]["source"])
    for line in ('method = "nn"', 'modality = "env"', "epochs = 2", "lr = 0.01",
                 'baseline = "env-nn"'):
        assert line in injected
    assert "data =" not in injected  # the notebook finds the store under /kaggle/input
    assert "dry run: nothing pushed" in out and "kernels_push" in out

    code = cli.main(["kaggle", "push", "no-such-baseline", "--dataset", "alice/geoplant-test",
                     "--dry-run"])
    assert "unknown baseline" in one_line_error((code, capsys.readouterr().err))


def test_push_wait_then_pull_through_the_real_client(
        server: KaggleStandIn, tmp_path: Path) -> None:
    server.kernel_states = [("QUEUED", ""), ("RUNNING", ""), ("COMPLETE", "")]
    server.outputs = {"metrics.json": b'{"samples_f1": 0.31}',
                      "submission.csv": b"surveyId,predictions\n1,2 3\n",
                      "figures/richness.png": b"\x89PNG fake"}
    proc = kaggle(server, tmp_path, "push", "env-nn", "--dataset", "alice/geoplant-test",
                  "--gpu", "-p", "epochs", "3", "--staging", str(tmp_path / "k"), "--wait",
                  "--poll-interval", "0.01")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert f"pushed {KERNEL} version 1" in proc.stdout and "finished: complete" in proc.stdout
    assert [line.rsplit(": ", 1)[1] for line in proc.stdout.splitlines()
            if line.startswith(f"kernel {KERNEL}: ")] == ["queued", "running", "complete"]
    assert server.rpcs() == ["SaveKernel", *["GetKernelSessionStatus"] * 3]
    (save,) = server.calls("SaveKernel")
    assert save["slug"] == KERNEL and save["newTitle"] == "geoplant env nn"
    assert save["language"] == "python" and save["kernelType"] == "notebook"
    assert save["isPrivate"] is True and save["enableGpu"] is True
    assert save["enableInternet"] is False
    assert save["datasetDataSources"] == ["alice/geoplant-test"]
    assert save["competitionDataSources"] == ["geolifeclef-2024"]
    notebook = json.loads(save["text"])
    assert any("epochs = 3" in c["source"] for c in notebook["cells"]
               if "injected-parameters" in c["metadata"].get("tags", []))
    status = server.calls("GetKernelSessionStatus")[0]
    assert status["userName"] == USER and status["kernelSlug"] == "geoplant-env-nn"

    server.log.clear()
    out = tmp_path / "out"
    proc = kaggle(server, tmp_path, "pull", KERNEL, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert server.rpcs() == ["ListKernelSessionOutput"]
    for name, data in server.outputs.items():
        assert (out / name).read_bytes() == data
    assert (out / "geoplant-env-nn.log").is_file()
    assert "  figures/richness.png" in proc.stdout.splitlines() and "4 file(s)" in proc.stdout


def test_push_wait_reports_a_failed_run(server: KaggleStandIn, tmp_path: Path) -> None:
    server.kernel_states = [("RUNNING", ""), ("ERROR", "CUDA out of memory.\n  Tried to "
                                             "allocate 2.00 GiB")]
    proc = kaggle(server, tmp_path, "push", "env-nn", "--dataset", "alice/geoplant-test",
                  "--staging", str(tmp_path / "k"), "--wait", "--poll-interval", "0.01")
    err = one_line_error(proc)
    assert (f"kernel {KERNEL} run ended with status error: CUDA out of memory. Tried to "
            "allocate 2.00 GiB") in err
    assert f"geoplant kaggle pull {KERNEL} --out DIR" in err
    assert server.rpcs() == ["SaveKernel", "GetKernelSessionStatus", "GetKernelSessionStatus"]


def test_wait_for_kernel_is_bounded() -> None:
    class Api:
        calls = 0

        def kernels_status(self, kernel: str) -> Any:
            Api.calls += 1
            return type("R", (), {"status": "running", "failure_message": None})()

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    seen: list[str] = []
    with pytest.raises(GeoplantError, match="still running after 100 s") as info:
        wait_for_kernel(KERNEL, poll_interval=30, timeout=100, api=Api(), sleep=sleep,
                        clock=lambda: now[0], report=seen.append)
    assert Api.calls == 4 and now[0] == 90  # polls at 0, 30, 60, 90; stops before 120
    assert seen == ["running"]  # reported once, when it changed
    assert "--timeout" in info.value.one_line()

    answers: list[Any] = [ConnectionError("reset"), "queued", OSError("timed out"), "complete"]

    class Flaky:  # a dropped connection is retried, a completed run ends the wait
        def kernels_status(self, kernel: str) -> Any:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return type("R", (), {"status": answer, "failure_message": None})()

    seen.clear()
    assert wait_for_kernel(KERNEL, poll_interval=1, timeout=100, api=Flaky(), sleep=sleep,
                           clock=lambda: now[0], report=seen.append) == "complete"
    assert seen == ["queued", "complete"] and not answers


# ------------------------------------------------------------------------------- submit


def test_submit_through_the_real_client(server: KaggleStandIn, tmp_path: Path) -> None:
    raw = make_raw(tmp_path, [642, 1792, 3001])
    sub = write_submission(tmp_path / "submission.csv",
                           {642: "12 485 7001", 1792: "5 11254", 3001: "7"})
    proc = kaggle(server, tmp_path, "submit", str(sub), "--raw", str(raw), "--message",
                  "env-nn, top-k")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "valid: 3 test surveys" in proc.stdout
    assert "submitted to geolifeclef-2024 (submission 4242)" in proc.stdout
    assert server.rpcs() == ["StartSubmissionUpload", "CreateSubmission"]
    (start,) = server.calls("StartSubmissionUpload")
    assert start["competitionName"] == "geolifeclef-2024"
    assert start["fileName"] == "submission.csv"
    assert int(start["contentLength"]) == sub.stat().st_size
    assert server.uploaded() == {"submission.csv": sub.read_bytes()}
    (create,) = server.calls("CreateSubmission")
    assert create["competitionName"] == "geolifeclef-2024"
    assert create["blobFileTokens"] == "blob0"
    assert create["submissionDescription"] == "env-nn, top-k"


def test_submit_refuses_a_missing_test_survey(tmp_path: Path, capsys) -> None:
    # Survey 3 is in the raw test metadata (e.g. dropped from a store at build): still required.
    raw = make_raw(tmp_path, [1, 2, 3])
    sub = write_submission(tmp_path / "sub.csv", {1: "5", 2: "6"})
    code = cli.main(["kaggle", "submit", str(sub), "--raw", str(raw), "--dry-run"])
    err = one_line_error((code, capsys.readouterr().err))
    assert f"{sub}: 1 test survey(s) missing, e.g. surveyId 3" in err
    assert "GLC24_PA_metadata_test.csv" in err and "fix: write one row for every test survey" \
        in err


def test_submit_refuses_an_empty_row(tmp_path: Path, capsys) -> None:
    raw = make_raw(tmp_path, [1, 2, 3])
    sub = write_submission(tmp_path / "sub.csv", {1: "5", 2: "", 3: "7 8"})
    code = cli.main(["kaggle", "submit", str(sub), "--raw", str(raw)])  # before credentials
    err = one_line_error((code, capsys.readouterr().err))
    assert f"{sub}: line 3: surveyId 2 predicts no species (1 empty row(s))" in err
    assert "fix: predict at least one species per survey" in err

    write_submission(sub, {1: "5", 2: "6", 3: "7 8"})
    assert cli.main(["kaggle", "submit", str(sub), "--raw", str(raw), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "valid: 3 test surveys" in out and "dry run: not submitted" in out


def test_test_surveys_by_layout_and_competition(tmp_path: Path) -> None:
    raw = make_raw(tmp_path, [5, 4])
    ids, source = competition_test_ids(raw)
    assert ids.tolist() == [4, 5] and source.endswith("GLC24_PA_metadata_test.csv")
    g26 = tmp_path / "g26"
    folder = g26 / "GeoPlantData" / "PresenceAbsenceSurveys"
    folder.mkdir(parents=True)
    header = ",".join(PA_TEST_COLUMNS)
    for split, sid in (("test_iid", 7), ("test_glc25", 5000108)):
        (folder / f"PA_metadata_{split}.csv").write_text(
            f"{header}\n10.0,45.0,2021,5.0,100.0,ALPINE,Italy,{sid}\n")
    assert competition_test_ids(g26)[0].tolist() == [7]
    assert competition_test_ids(g26, competition="geolifeclef-2025")[0].tolist() == [5000108]
    with pytest.raises(GeoplantError, match="no known test split") as info:
        competition_test_ids(raw, competition="geolifeclef-2025")
    assert "--split" in info.value.one_line()
