"""Finding adapter files: a local directory first, then the Hugging Face hub (through its local cache).

huggingface_hub is imported here only, and only when a path is not a local directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import Any

from peftkit.errors import CheckpointError
from peftkit.io.commit import committed_file

#: Keyword arguments that are meant for huggingface_hub rather than for the model or config.
HUB_KWARGS = frozenset(
    {"revision", "cache_dir", "token", "use_auth_token", "force_download", "proxies", "local_files_only", "repo_type"}
)


def resolve_file(
    name_or_path: str | os.PathLike, filename: str, subfolder: str | None = None, **hub_kwargs: Any
) -> str | None:
    """Return a local path to ``filename`` of an adapter, or ``None`` when it does not exist.

    A local directory is searched directly (``<dir>/<subfolder>/<filename>``, or the staged file of a committed
    save that was interrupted: :func:`~peftkit.io.commit.committed_file`); anything else is treated as a
    hub repo id and downloaded through huggingface_hub's cache, which honours ``HF_HUB_OFFLINE=1``.
    """
    base = os.fspath(name_or_path)
    local_dir = os.path.join(base, subfolder) if subfolder else base
    if os.path.isdir(local_dir):
        return committed_file(local_dir, filename)
    if os.path.isdir(base) or os.path.isfile(base):
        return None
    return _hub_download(base, filename, subfolder, **hub_kwargs)


def _hub_download(repo_id: str, filename: str, subfolder: str | None, **hub_kwargs: Any) -> str | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, LocalEntryNotFoundError

    token = hub_kwargs.pop("token", None) or hub_kwargs.pop("use_auth_token", None)
    hub_kwargs.pop("use_auth_token", None)
    try:
        return hf_hub_download(repo_id, filename, subfolder=subfolder or None, token=token, **hub_kwargs)
    except EntryNotFoundError:
        return None
    except HFValidationError as exc:
        raise CheckpointError(
            f"{repo_id!r} is neither a local directory nor a valid hub repo id; check the path."
        ) from exc
    except LocalEntryNotFoundError:
        return None
    except Exception as exc:  # network, auth, missing repo
        raise CheckpointError(f"Could not fetch {filename!r} of {repo_id!r} from the hub: {exc}") from exc


def upload_adapter(
    save: Callable[[str], None],
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> Any:
    """Create ``repo_id`` if needed and commit exactly the files that ``save(tmp_dir)`` writes (one commit).

    Returns:
        huggingface_hub's ``CommitInfo`` for the commit.
    """
    import tempfile

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save(tmp)
        operations = [
            CommitOperationAdd(
                path_in_repo=os.path.relpath(os.path.join(root, f), tmp).replace(os.sep, "/"),
                path_or_fileobj=os.path.join(root, f),
            )
            for root, _, files in sorted(os.walk(tmp))
            for f in sorted(files)
        ]
        return api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=commit_message or "Upload adapter",
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )


def push_adapter_to_hub(
    peft_model: Any,
    repo_id: str,
    *,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    **save_kwargs: Any,
) -> Any:
    """``PeftModel.push_to_hub``: upload exactly the files of ``peft_model.save_pretrained(**save_kwargs)`` to hub
    repo ``repo_id``, one commit (:func:`upload_adapter`)."""
    save_kwargs.pop("max_shard_size", None)
    options: dict[str, Any] = {"commit_message": commit_message, "private": private, "token": token}
    save = partial(peft_model.save_pretrained, **save_kwargs)
    return upload_adapter(save, repo_id, revision=revision, create_pr=create_pr, **options)
