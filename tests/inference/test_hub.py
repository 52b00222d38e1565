"""Hub repositories without the Hub: ids resolved from a Hugging Face cache laid out here, and push
then pull through a local HTTP endpoint (`HF_ENDPOINT=http://127.0.0.1:PORT`) that speaks the
part of the Hub's API huggingface_hub uses for create_repo, upload_folder and snapshot_download.
No request leaves 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import torch
from huggingface_hub import constants

from fixtures.tiny import sample_texts
from vdcnn_res import Predictor
from vdcnn_res.cli import main
from vdcnn_res.errors import MissingFileError, UserError
from vdcnn_res.inference.hub import is_repo_id, resolve_model_source, split_revision

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TOKEN = "hf_local_test_token"
REPO_ID = "acme/agnews-tiny"


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("hub_export") / "model"
    main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(out)])
    return out


def lay_out_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = "a" * 40, ref: str = "main") -> Path:
    """A Hugging Face hub cache as huggingface_hub writes it: blobs, snapshots/<commit>/ links, refs/<ref>."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (storage / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """HF_HUB_CACHE in tmp_path, HF_HUB_OFFLINE=1 (as tests/conftest.py sets for the whole suite)."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# ----------------------------------------------------------------------------- ids and the cache


def test_what_counts_as_a_repository_id():
    assert is_repo_id("org/name") and is_repo_id("org/name@v1.0") and is_repo_id("my-org/agnews.v2")
    for path in ("name", "./org/name", "/abs/org", "a/b/c", "~/org", "org/na me", "org//name"):
        assert not is_repo_id(path), path
    assert not is_repo_id(Path("org/name"))  # a Path object is always a path
    assert split_revision("org/name@v1") == ("org/name", "v1") and split_revision("org/name", "main") == ("org/name", "main")
    with pytest.raises(UserError, match="give one of them"):
        split_revision("org/name@v1", "v2")


def test_a_repository_id_loads_from_the_cache_offline_and_predicts_like_the_folder(exported, offline_cache):
    files = folder_files(exported)
    lay_out_cache(offline_cache, REPO_ID, files, commit="1" * 40)
    lay_out_cache(offline_cache, REPO_ID, files, commit="2" * 40, ref="v1")  # a tag pointing at another commit
    texts = sample_texts(n=20)[0] + ["", "z" * 3000]
    expected = Predictor.from_pretrained(exported).predict_proba(texts)
    for source, revision, commit in [(REPO_ID, None, "1"), (REPO_ID, "v1", "2"), (f"{REPO_ID}@v1", None, "2"),
                                     (REPO_ID, "2" * 40, "2")]:
        folder = resolve_model_source(source, revision=revision)
        assert folder == offline_cache / "models--acme--agnews-tiny" / "snapshots" / (commit * 40)
        predictor = Predictor.from_pretrained(source, revision=revision)
        np.testing.assert_array_equal(predictor.predict_proba(texts), expected)


def test_a_local_folder_wins_over_a_repository_of_the_same_name(exported, offline_cache, tmp_path, monkeypatch):
    local = tmp_path / "acme" / "agnews-tiny"
    shutil.copytree(exported, local)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_source("acme/agnews-tiny") == Path("acme/agnews-tiny")  # no cache, no Hub: the folder
    assert Predictor.from_pretrained("acme/agnews-tiny").label_names == Predictor.from_pretrained(exported).label_names
    with pytest.raises(UserError, match="applies to Hub repositories"):
        Predictor.from_pretrained("acme/agnews-tiny", revision="v1")


def test_offline_and_not_cached_is_one_line(offline_cache):
    with pytest.raises(MissingFileError) as err:
        Predictor.from_pretrained("acme/not-downloaded")
    message = str(err.value)
    assert "'acme/not-downloaded' is not a folder here and not in the Hugging Face cache" in message
    assert "HF_HUB_OFFLINE is set" in message and "\n" not in message


def test_pickle_only_repositories_and_folders_are_refused_never_unpickled(exported, tmp_path, offline_cache, caplog):
    marker = tmp_path / "PWNED"
    from conftest import RunsCode

    payload = tmp_path / "payload.bin"
    torch.save({"x": RunsCode(str(marker))}, payload)
    # a folder with only pickle weights: refused in one line
    only_pickles = tmp_path / "only_pickles"
    only_pickles.mkdir()
    shutil.copy(exported / "config.json", only_pickles)
    shutil.copy(payload, only_pickles / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"holds its weights only as pickle files \['pytorch_model.bin'\]") as err:
        Predictor.from_pretrained(only_pickles)
    assert "never unpickles" in str(err.value) and "\n" not in str(err.value)
    # a folder with model.safetensors and pickles beside it: the safetensors load, the pickles are left alone
    mixed = tmp_path / "mixed"
    shutil.copytree(exported, mixed)
    for name in ("pytorch_model.bin", "model.ckpt", "extra.pkl"):
        shutil.copy(payload, mixed / name)
    with caplog.at_level("WARNING"):
        predictor = Predictor.from_pretrained(mixed)
    assert predictor.predict("Stocks rallied.")["label"] in predictor.label_names
    assert "ignoring ['extra.pkl', 'model.ckpt', 'pytorch_model.bin']" in caplog.text
    assert not marker.exists()


# ----------------------------------------------------------------------------- a local Hub endpoint


class LocalHub(ThreadingHTTPServer):
    """A Hub on 127.0.0.1: repositories in memory, every request recorded as (method, path)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.repos: dict[str, dict] = {}  # id -> {"private", "files": {path: bytes}, "sha", "refs": {name: sha}}
        self.requests: list[tuple[str, str]] = []
        self.commits: list[dict] = []  # each commit's header and file operations, as sent
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _HubHandler(BaseHTTPRequestHandler):
    server: LocalHub

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None) -> None:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if isinstance(body, (dict, list)):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        self._error(401, "", "Invalid credentials in Authorization header")
        return False

    def _repo(self, repo_id: str) -> dict | None:
        repo = self.server.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def do_POST(self) -> None:
        path = unquote(urlparse(self.path).path)
        self.server.requests.append(("POST", path))
        body = self._body()
        if path == "/api/validate-yaml":
            return self._send(200, {"errors": [], "warnings": []})
        if not self._authorized():
            return None
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            if repo_id in self.server.repos:
                return self._error(409, "", "You already created this model repo")
            private = payload.get("visibility", "private" if payload.get("private") else "public") == "private"
            self.server.repos[repo_id] = {"private": private, "files": {}, "sha": "0" * 40, "refs": {}}
            return self._send(200, {"url": f"{self.server.url}/{repo_id}", "name": repo_id})
        if "/preupload/" in path:
            repo_id = path.removeprefix("/api/models/").split("/preupload/")[0]
            if self._repo(repo_id) is None:
                return None
            files = json.loads(body)["files"]
            return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                              for f in files]})
        if "/commit/" in path:
            repo_id, revision = path.removeprefix("/api/models/").split("/commit/")
            repo = self._repo(repo_id)
            if repo is None:
                return None
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            self.server.commits.append({"repo": repo_id, "revision": revision, "lines": lines})
            files = dict(repo["files"])
            for line in lines:
                if line["key"] == "file":
                    files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                elif line["key"] != "header":
                    return self._error(400, "", f"unsupported operation {line['key']}")
            sha = hashlib.sha1(json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())).encode()).hexdigest()
            repo.update(files=files, sha=sha)
            repo["refs"][revision] = sha
            return self._send(200, {"success": True, "commitOid": sha, "commitUrl": f"{self.server.url}/{repo_id}/commit/{sha}"})
        return self._error(404, "", f"no route {path}")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        self.server.requests.append((self.command, path))
        if path.startswith("/api/models/"):
            rest = path.removeprefix("/api/models/")
            for route in ("/revision/", "/tree/"):
                if route in rest:
                    repo_id, revision = rest.split(route, 1)
                    break
            else:
                return self._error(404, "", f"no route {path}")
            repo = self._repo(repo_id)
            if repo is None:
                return None
            sha = repo["refs"].get(revision, revision if revision == repo["sha"] else None)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            if route == "/revision/":
                return self._send(200, {"id": repo_id, "sha": sha, "private": repo["private"],
                                        "siblings": [{"rfilename": name} for name in sorted(repo["files"])]})
            return self._send(200, [{"type": "file", "path": name, "size": len(data),
                                     "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
                                    for name, data in sorted(repo["files"].items())])
        parts = path.strip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            repo = self._repo(repo_id)
            if repo is None:
                return None
            if name not in repo["files"]:
                return self._error(404, "EntryNotFound", f"{name} does not exist")
            data = repo["files"][name]
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            return self._send(200, data, {"X-Repo-Commit": repo["sha"], "ETag": f'"{etag}"'})
        return self._error(404, "", f"no route {path}")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A LocalHub serving in a thread; this process's huggingface_hub pointed at it, online, with a token."""
    server = LocalHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    yield server
    server.shutdown()
    server.server_close()


def _pickle_payload(tmp_path: Path) -> tuple[bytes, Path]:
    from conftest import RunsCode

    marker = tmp_path / "PWNED"
    path = tmp_path / "payload.bin"
    torch.save({"x": RunsCode(str(marker))}, path)
    return path.read_bytes(), marker


def test_push_then_pull_by_id_round_trips_to_identical_predictions(ckpt, hub, tmp_path, monkeypatch, capsys):
    out = tmp_path / "export"
    main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(out), "--push_to_hub", REPO_ID, "--private"])
    printed = capsys.readouterr().out
    assert f"Pushed {out} to {REPO_ID}: {hub.url}/{REPO_ID}/commit/" in printed
    # what was sent: one repository (private), one commit of exactly the model's files, byte for byte
    assert hub.repos[REPO_ID]["private"] is True
    assert hub.repos[REPO_ID]["files"] == folder_files(out)
    assert sorted(hub.repos[REPO_ID]["files"]) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    [commit] = hub.commits
    assert [line["key"] for line in commit["lines"]] == ["header", "file", "file", "file", "file"]
    assert commit["revision"] == "main" and commit["lines"][0]["value"]["summary"] == "Upload vdcnn-res model"

    texts = sample_texts(n=30)[0] + ["", "日本語 café", "z" * 4000]
    expected = Predictor.from_pretrained(out).predict_proba(texts)
    pulled = Predictor.from_pretrained(REPO_ID)  # online: downloads into HF_HUB_CACHE
    np.testing.assert_array_equal(pulled.predict_proba(texts), expected)
    downloaded = sorted(p.rsplit("/", 1)[-1] for m, p in hub.requests if m == "GET" and "/resolve/" in p)
    assert downloaded == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]

    hub.shutdown()  # the Hub is gone; offline, the id still loads from the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    np.testing.assert_array_equal(Predictor.from_pretrained(REPO_ID).predict_proba(texts), expected)
    np.testing.assert_array_equal(Predictor.from_pretrained(REPO_ID, revision="main").predict_proba(texts), expected)


def test_pickle_files_in_a_repository_are_never_downloaded(exported, hub, tmp_path):
    payload, marker = _pickle_payload(tmp_path)
    files = {**folder_files(exported), "pytorch_model.bin": payload, "training_args.pt": payload}
    hub.repos["acme/mixed"] = {"private": False, "files": files, "sha": "b" * 40, "refs": {"main": "b" * 40}}
    predictor = Predictor.from_pretrained("acme/mixed")
    assert predictor.predict("Stocks rallied.")["label"] in predictor.label_names
    fetched = [p for m, p in hub.requests if "/resolve/" in p]
    assert fetched and not [p for p in fetched if p.endswith((".bin", ".pt"))]
    hub.repos["acme/pickles"] = {"private": False, "sha": "c" * 40, "refs": {"main": "c" * 40},
                                 "files": {"config.json": files["config.json"], "pytorch_model.bin": payload}}
    with pytest.raises(UserError, match=r"'acme/pickles' holds its weights only as pickle files \['pytorch_model.bin'\]"):
        Predictor.from_pretrained("acme/pickles")
    assert not marker.exists()


def test_hub_errors_are_one_line(exported, hub, tmp_path, monkeypatch, ckpt, capsys):
    hub.repos[REPO_ID] = {"private": False, "files": folder_files(exported), "sha": "d" * 40, "refs": {"main": "d" * 40}}
    with pytest.raises(MissingFileError, match="'acme/nothing' is neither a folder here nor a Hub repository you can read"):
        Predictor.from_pretrained("acme/nothing")
    with pytest.raises(UserError, match=f"{REPO_ID!r} has no revision 'v9' on the Hub"):
        Predictor.from_pretrained(REPO_ID, revision="v9")
    # pushing without a token: refused by the Hub, said in one line with the fix, exit status 2
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no_login"))  # no stored token either
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_login" / "token"))
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "out"), "--push_to_hub", "acme/new"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--push_to_hub acme/new: the Hub refused the upload" in err[0] and "HF_TOKEN" in err[0]
    # nobody listening at the endpoint: the download says so
    closed = hub.url
    hub.shutdown()
    hub.server_close()
    with pytest.raises(UserError, match="'acme/elsewhere' is not a folder here, and the Hub cannot be reached to download it") as err:
        Predictor.from_pretrained("acme/elsewhere")
    assert closed and "\n" not in str(err.value)


@pytest.mark.parametrize("args, words", [
    (["--push_to_hub", "no-namespace"], "give the repository id as org/name"),
    (["--push_to_hub", "acme/bad name"], "is not a Hub repository id"),
    (["--private"], "--private only applies with --push_to_hub"),
])
def test_push_arguments_are_checked_before_anything_is_written(ckpt, tmp_path, capsys, args, words):
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "out"), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
    assert not (tmp_path / "out").exists()


def test_push_is_refused_offline_before_anything_is_written(ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit):  # tests/conftest.py sets HF_HUB_OFFLINE=1
        main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "out"), "--push_to_hub", REPO_ID])
    assert "HF_HUB_OFFLINE is set, nothing can be uploaded" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_serve_takes_a_repository_id_from_the_cache_offline(exported, tmp_path):
    """`vdcnn-res serve --model org/name@rev` in its own process, HF_HUB_OFFLINE=1, the id only in the cache."""
    from test_server import ServerProcess, post

    cache = tmp_path / "hub"
    lay_out_cache(cache, REPO_ID, folder_files(exported), commit="e" * 40, ref="v1")
    server = ServerProcess("--model", f"{REPO_ID}@v1", "--precision", "fp32",
                           env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    try:
        server.start().wait_ready()
        texts = sample_texts(n=8)[0]
        got = post(server.url, {"texts": texts, "top_k": 2}).json()["predictions"]
    finally:
        server.stop()
    expected = Predictor.from_pretrained(exported, bf16=False).predict(texts, top_k=2)
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    np.testing.assert_allclose([g["probability"] for g in got], [e["probability"] for e in expected], atol=1e-5)
