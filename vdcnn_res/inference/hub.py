"""Models shared by name: Hugging Face Hub repository ids as a source of exported folders, and push.

    Predictor.from_pretrained("org/name")                 # the Hub (or its local cache)
    Predictor.from_pretrained("org/name", revision="v1")  # a branch, tag or commit; "org/name@v1" too
    vdcnn-res export --ckpt_path CKPT --out_dir exports/m --push_to_hub org/name [--private]

A source names a local folder when that folder exists (it always wins); otherwise a string of the
form ``org/name`` (``@revision`` optional) is a Hub repository, resolved by ``huggingface_hub``'s
``snapshot_download``: downloaded once into the Hugging Face cache (``HF_HUB_CACHE``, by default
``~/.cache/huggingface/hub``), read from there afterwards; with ``HF_HUB_OFFLINE=1`` only the
cache is read. ``HF_ENDPOINT`` and ``HF_TOKEN`` work as everywhere in the Hugging Face libraries.

Untrusted repositories: only the files vdcnn-res reads are downloaded (:data:`MODEL_FILES`:
safetensors, JSON, the model card; the int8 ONNX graph when asked for), so pickle weights
(``pytorch_model.bin``, ``*.pt``, ``*.ckpt``, ...) in a repository never reach the disk, and a
repository whose weights exist only as pickles is refused in one line naming them. Local folders
get the same rule in ``model_files.read_pretrained``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vdcnn_res.errors import MissingFileError, UserError

__all__ = [
    "MODEL_FILES", "PICKLE_SUFFIXES", "check_push_target", "is_repo_id", "pickle_files", "push_folder",
    "resolve_model_source", "split_revision",
]

# What a model repository may hand over: the exported folder's files (model_files.py) and its card.
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "README.md")
INT8_FILE = "model.int8.onnx"  # quantize.INT8_ONNX_FILE; ONNX is protobuf, not pickle
# Files that are (or usually wrap) Python pickles: never downloaded, never opened.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")
# A Hub model id: namespace/name, letters, digits, "-", "_", "." (huggingface_hub validates the rest).
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?:@[^\s@]+)?$")


def pickle_files(names: list[str]) -> list[str]:
    """The names among ``names`` that are pickle files (by suffix), sorted."""
    return sorted(n for n in names if n.lower().endswith(PICKLE_SUFFIXES))


def split_revision(source: str, revision: str | None = None) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``); an explicit ``revision`` must agree with the suffix."""
    repo_id, _, suffix = source.partition("@")
    if suffix and revision is not None and suffix != revision:
        raise UserError(f"{source!r} names revision {suffix!r} but revision={revision!r} was given; give one of them")
    return repo_id, suffix or revision


def is_repo_id(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` has the form of a Hub model id (``org/name[@revision]``) rather than a path."""
    text = str(source)
    if not isinstance(source, str) or not _REPO_ID.match(text) or text.startswith((".", "~")):
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(split_revision(text)[0])
    except HFValidationError:
        return False
    return True


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def resolve_model_source(source: str | os.PathLike[str], revision: str | None = None, int8: bool = False) -> Path:
    """The local folder a source names: the folder itself, or a Hub repository's snapshot in the cache.

    A path that exists is returned as is (also when it looks like ``org/name``); a source that
    is not a Hub id is returned as a path too, for ``read_pretrained`` to report. Every Hub
    failure is a one-line UserError: repository or revision not found, offline and not cached,
    the Hub unreachable, or only pickle weights in the repository.
    """
    path = Path(source).expanduser()
    if path.exists() or not is_repo_id(source):
        if revision is not None:
            raise UserError(f"revision={revision!r} applies to Hub repositories; {str(source)!r} is a local path")
        return path
    repo_id, revision = split_revision(str(source), revision)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    named = f"{repo_id}" + (f"@{revision}" if revision else "")
    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    offline = _offline()
    patterns = list(MODEL_FILES) + ([INT8_FILE] if int8 else [])
    try:
        folder = Path(snapshot_download(
            repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache, local_files_only=offline,
            endpoint=os.environ.get("HF_ENDPOINT") or None, library_name="vdcnn-res",
        ))
    except RevisionNotFoundError:
        raise UserError(f"{repo_id!r} has no revision {revision!r} on the Hub; give an existing branch, tag or commit") from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise MissingFileError(
            f"{named!r} is neither a folder here nor a Hub repository you can read (not found, private or gated); "
            "check the name, or log in (`hf auth login`, or HF_TOKEN) for a private repository"
        ) from None
    except IncompleteSnapshotError:
        raise UserError(
            f"the cached copy of {named!r} in {cache} is incomplete and the Hub cannot be reached; "
            "download it again with network access (unset HF_HUB_OFFLINE)"
        ) from None
    except LocalEntryNotFoundError as err:
        if offline:
            raise MissingFileError(
                f"{named!r} is not a folder here and not in the Hugging Face cache ({cache}), and HF_HUB_OFFLINE is set; "
                "download it once with network access, or point HF_HUB_CACHE at a cache that has it"
            ) from None
        cause = err.__cause__ or err
        raise UserError(
            f"{named!r} is not a folder here, and the Hub cannot be reached to download it ({type(cause).__name__}; "
            f"not in the cache {cache}); check the path, or the network (or HF_ENDPOINT) and try again"
        ) from None
    except HfHubHTTPError as err:
        raise UserError(f"the Hub refused to send {named!r} ({str(err).splitlines()[0][:200]}); try again later") from None
    if not (folder / "model.safetensors").is_file():
        pickles = _cached_pickles(repo_id, folder.name, cache)
        if pickles:
            raise UserError(
                f"{named!r} holds its weights only as pickle files {pickles[:5]}, which vdcnn-res never downloads or "
                "unpickles (they can run code); ask for a repository with model.safetensors (`vdcnn-res export` writes one)"
            )
    return folder


def _cached_pickles(repo_id: str, commit: str, cache: str) -> list[str]:
    """Pickle files in a repository's file listing as cached by snapshot_download (no network); [] if unknown."""
    try:
        from huggingface_hub import get_cached_repo_tree

        return pickle_files([f.path for f in get_cached_repo_tree(repo_id, revision=commit, cache_dir=cache)])
    except Exception:  # noqa: BLE001 - no cached listing (offline download): the folder check reports what is missing
        return []


def check_push_target(repo_id: str) -> None:
    """A one-line UserError for an id that is not ``org/name`` or when HF_HUB_OFFLINE forbids uploads."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise UserError(f"--push_to_hub {repo_id!r}: give the repository id as org/name (or your user name/name)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UserError(f"--push_to_hub {repo_id!r} is not a Hub repository id ({str(err).splitlines()[0]})") from None
    if _offline():
        raise UserError(f"--push_to_hub {repo_id}: HF_HUB_OFFLINE is set, nothing can be uploaded; unset it and run again")


def push_folder(folder: str | os.PathLike[str], repo_id: str, private: bool = False, commit_message: str | None = None) -> str:
    """Create ``repo_id`` on the Hub if needed and upload an exported folder to it as one commit.

    Only the model's files are sent (:data:`MODEL_FILES` and ONNX graphs, never a pickle). Returns the
    commit's URL. Errors (not logged in, no write access, offline, unreachable) are one-line UserErrors.
    """
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    check_push_target(repo_id)
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, library_name="vdcnn-res")
    try:
        api.create_repo(repo_id, private=True if private else None, exist_ok=True)  # None: the namespace's default
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), allow_patterns=[*MODEL_FILES, "*.onnx"],
            commit_message=commit_message or "Upload vdcnn-res model",
        )
    except OfflineModeIsEnabled:
        raise UserError(f"--push_to_hub {repo_id}: HF_HUB_OFFLINE is set; unset it to upload") from None
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        hint = "log in with `hf auth login` or set HF_TOKEN (a token with write access)" if status in (401, 403) else "try again later"
        raise UserError(f"--push_to_hub {repo_id}: the Hub refused the upload ({str(err).splitlines()[0][:200]}); {hint}") from None
    except httpx2.TransportError as err:  # connection refused, DNS, timeouts (after huggingface_hub's retries)
        raise UserError(f"--push_to_hub {repo_id}: cannot reach the Hub ({type(err).__name__}: {err}); check the network or HF_ENDPOINT") from None
    return str(info.commit_url)
