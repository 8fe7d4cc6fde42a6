"""Weights and the model registry: where ``custom_weights_path`` points (a checkpoint folder, a
run's checkpoint, a registered model version), registering a run's final model and the model
versions of a run.

Registration uses only an explicit client: the model is saved locally with
``mlflow.transformers.save_model``, uploaded as an MLflow logged model of the run, and registered
with ``create_model_version``. mlflow's global state (tracking URI, active run) is never touched,
so registering leaves the run RUNNING and the notebook's own mlflow calls unaffected.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmagic.errors import RunError
from ftmagic.tracking import state
from ftmagic.tracking.checkpoints import CHECKPOINTS_DIR, download_checkpoint
from ftmagic.tracking.client import cache_dir, check_run_id, client, slug

if TYPE_CHECKING:
    from mlflow import MlflowClient

REGISTERED_TAG = "ftmagic.registered_model"
MODEL_NAME = "model"

SERVING_DEFAULTS: dict[str, Any] = {"max_new_tokens": 64, "do_sample": False}
"""Generation defaults of a registered model; a request's ``params`` override them. Greedy, like
``Run.generate``: transformers' text-generation pipeline would otherwise sample (a constant).
They are the signature's param defaults, which mlflow applies to every request; not also a
``model_config``, which mlflow would log as run params over the run's own ``max_new_tokens``."""


def resolve_weights(custom_weights_path: str, *, uri: str | None = None) -> Path:
    """A local folder of weights for ``custom_weights_path``.

    Accepts a checkpoint folder, ``runs:/RUN_ID`` (its latest complete checkpoint; also
    ``runs:/RUN_ID/checkpoints/step-NNNNNNN``) or ``models:/name/version`` (a registered model).
    """
    text = str(custom_weights_path).strip()
    if text.startswith("runs:/"):
        parts = text[len("runs:/") :].strip("/").split("/")
        run_id = check_run_id(parts[0])
        step = None
        if len(parts) == 3 and parts[1] == CHECKPOINTS_DIR and parts[2].startswith("step-"):
            step = int(parts[2][len("step-") :])
        return _or_not_found(text, lambda: download_checkpoint(run_id, step, uri=uri))
    if text.startswith("models:/"):
        return _or_not_found(text, lambda: download_registered_model(text, uri=uri))
    path = Path(text).expanduser()
    weights = ("config.json", "adapter_config.json")
    if any((folder / f).exists() for folder in (path, path / "model") for f in weights):
        return path.resolve()
    raise RunError(
        f"custom_weights_path '{text}': not found. It must be a checkpoint folder holding "
        "config.json (or model/config.json), 'runs:/RUN_ID' or 'models:/name/version'. "
        "Fix: check the path or the URI."
    )


def _or_not_found(text: str, fetch: Any) -> Path:
    from mlflow.exceptions import MlflowException

    try:
        return Path(fetch())
    except MlflowException as err:
        raise RunError(f"custom_weights_path '{text}': not found ({err.message})") from None


def download_registered_model(model_uri: str, *, uri: str | None = None) -> Path:
    """The Hugging Face folder (weights and tokenizer) of ``models:/name/version``, cached."""
    from mlflow.artifacts import download_artifacts

    name, version = _model_version(model_uri, uri)
    final = cache_dir() / "registry" / slug(name, "_") / version
    if any((final / f).exists() for f in ("config.json", "adapter_config.json")):
        return final
    mlflow_client = client(uri)
    source = mlflow_client.get_model_version_download_uri(name, version)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        got = Path(
            download_artifacts(
                artifact_uri=source, dst_path=tmp, tracking_uri=mlflow_client.tracking_uri
            )
        )
        model = _hf_folder(got)
        tokenizer = got / "components" / "tokenizer"
        if tokenizer.is_dir():
            for item in tokenizer.iterdir():
                if not (model / item.name).exists():
                    shutil.copy2(item, model / item.name)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(model, final)
    return final


def _hf_folder(got: Path) -> Path:
    """The loadable folder inside a downloaded mlflow transformers model: ``peft/`` (a LoRA
    adapter whose config names its base model) or ``model/`` (full weights)."""
    return next((got / d for d in ("peft", "model") if (got / d).is_dir()), got)


def _model_version(model_uri: str, uri: str | None) -> tuple[str, str]:
    body = model_uri[len("models:/") :].strip("/")
    mlflow_client = client(uri)
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        return name, str(mlflow_client.get_model_version_by_alias(name, alias).version)
    name, _, version = body.rpartition("/")
    if not name or not version:
        raise RunError(
            f"'{model_uri}' is not models:/name/version. Fix: e.g. models:/main.default.m/1"
        )
    if version == "latest":
        versions = mlflow_client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise RunError(f"registered model '{name}' has no versions")
        version = str(max(int(v.version) for v in versions))
    mlflow_client.get_model_version(name, version)  # raises when missing
    return name, version


def registered_model_name(register_to: str, run_name: str) -> str:
    """``catalog.schema`` -> ``catalog.schema.<run name>``; ``catalog.schema.name`` as given."""
    parts = register_to.split(".")
    if len(parts) == 3 and all(parts):
        return register_to
    if len(parts) == 2 and all(parts):
        return f"{register_to}.{slug(run_name, '_') or 'model'}"
    raise RunError(
        f"register_to '{register_to}' is not catalog.schema or catalog.schema.name. "
        "Fix: e.g. register_to: main.default"
    )


def tag_model_version(model_uri: str, tags: dict[str, Any], *, uri: str | None = None) -> None:
    """Set tags on the model version ``models:/name/version``."""
    name, version = _model_version(model_uri, uri)
    mlflow_client = client(uri)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, str(value))


def set_model_alias(model_uri: str, alias: str, *, uri: str | None = None) -> None:
    """Point ``alias`` (e.g. ``champion``) of the model at version ``models:/name/version``."""
    name, version = _model_version(model_uri, uri)
    client(uri).set_registered_model_alias(name, alias, version)


def run_model_versions(run_id: str, *, uri: str | None = None) -> list[dict[str, Any]]:
    """The model versions registered from run ``run_id``: ``uri``, ``tags``, ``aliases``."""
    mlflow_client = client(uri)
    found = mlflow_client.search_model_versions(f"run_id = '{check_run_id(run_id)}'")
    versions = []
    for v in sorted(found, key=lambda v: (v.name, int(v.version))):
        full = mlflow_client.get_model_version(v.name, v.version)  # search omits the aliases
        uri_text = f"models:/{v.name}/{v.version}"
        versions.append({"uri": uri_text, "tags": dict(full.tags), "aliases": sorted(full.aliases)})
    return versions


def _text_generation_pipeline(model_dir: Path) -> tuple[Any, str | None]:
    """A text-generation pipeline of a saved model, or of a LoRA adapter on its base model; and
    the adapter's base model when it is a local folder (mlflow then stores a reference to it
    rather than the adapter-injected base weights)."""
    import transformers

    from ftmagic.models.loading import load_adapter_model, load_model

    adapter_config = model_dir / "adapter_config.json"
    base_path = None
    if (model_dir / "config.json").exists():
        model = load_model(str(model_dir))
    elif adapter_config.exists():
        base = json.loads(adapter_config.read_text(encoding="utf-8"))["base_model_name_or_path"]
        model = load_adapter_model(model_dir)  # safetensors only
        base_path = base if Path(base).is_dir() else None
    else:
        raise RunError(
            f"{model_dir} holds no saved model (neither config.json nor adapter_config.json)"
        )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    return transformers.pipeline("text-generation", model=model, tokenizer=tokenizer), base_path


def register_model(
    run_id: str, model_dir: Path, register_to: str, run_name: str, *, uri: str | None = None
) -> str:
    """Log the final model (a text-generation pipeline) under the run and register a new version.

    Returns ``models:/name/version`` and records it in tag ``ftmagic.registered_model``.
    """
    name = registered_model_name(register_to, run_name)
    mlflow_client = client(uri)
    try:
        version = _log_and_register(mlflow_client, run_id, Path(model_dir), name)
    except RunError:
        raise
    except Exception as err:
        raise RunError(
            f"could not register the model of run {run_id} as '{name}': {type(err).__name__}: {err}"
        ) from err
    reference = f"models:/{name}/{version}"
    mlflow_client.set_tag(run_id, REGISTERED_TAG, reference)
    state.add_event(run_id, "REGISTERED", f"registered {reference}", uri=uri)
    return reference


def _log_and_register(mlflow_client: MlflowClient, run_id: str, model_dir: Path, name: str) -> str:
    """Save the model as an MLflow logged model of run ``run_id`` and register it as a new
    version of ``name``; returns the version."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    pipe, base_path = _text_generation_pipeline(model_dir)
    experiment = mlflow_client.get_run(run_id).info.experiment_id
    logged = mlflow_client.create_logged_model(experiment, name=MODEL_NAME, source_run_id=run_id)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / MODEL_NAME
            _save_pipeline(pipe, base_path, local, run_id, logged)
            mlflow_client.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        mlflow_client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    mlflow_client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    mlflow_client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    _ensure_registered_model(mlflow_client, name)
    # The stored location rather than models:/<id>, which a SQL registry resolves through
    # mlflow's global tracking URI instead of this client's.
    found = mlflow_client.create_model_version(
        name, logged.artifact_location, run_id=run_id, model_id=logged.model_id
    )
    return str(found.version)


def _save_pipeline(pipe: Any, base_path: str | None, path: Path, run_id: str, logged: Any) -> None:
    import mlflow.transformers
    import torch
    import transformers
    from mlflow.models import Model, infer_signature

    signature = infer_signature(["Hello"], ["Hello there"], params=SERVING_DEFAULTS)
    requirements = [f"transformers=={transformers.__version__}", f"torch=={torch.__version__}"]
    description = Model(
        artifact_path=logged.artifact_location,
        model_uuid=logged.model_id,
        run_id=run_id,
        model_id=logged.model_id,
    )
    mlflow.transformers.save_model(
        pipe,
        str(path),
        mlflow_model=description,
        signature=signature,
        pip_requirements=requirements,
        base_model_path=base_path,
    )


def _ensure_registered_model(mlflow_client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
