"""CorDA initialisation (Yang et al., 2024, "CorDA: Context-Oriented Decomposition Adaptation of Large Language
Models", arXiv:2406.05223): LoRA factors from the SVD of the base weight times the input covariance.

For each adapted ``W (out, in)`` with sampled inputs ``X (n, in)`` (each call's ``X`` divided by its largest entry):

* ``C = mean over calls of X^T X`` (``in x in``), damped to ``C' = C + d * mean(diag C) * I`` with ``d = 0.01``
  doubled until ``||C' C'^{-1} - I||_F < 0.05``;
* ``W C' = U S V_h`` (thin SVD) and ``V = (V_h C'^{-1})^T (in, k)``, so that ``W = U S V^T``;
* IPM keeps the ``r`` largest components, KPM the ``r`` smallest (the largest stay in the base, preserving the
  knowledge the data exercises);
* with ``s`` the LoRA scaling: ``A = sqrt(S_r / s) V_r^T (r, in)``, ``B = U_r sqrt(S_r / s) (out, r)`` and the
  base keeps ``W - s B A``, so the adapted layer starts equal to the original one.

:func:`preprocess_corda` runs the model once over the user's data (``run_model``) with forward hooks, and leaves on
each target module ``eigens`` (:class:`CordaEigens`, cropped to its rank) that the LoRA layer consumes when it is
created with ``init_lora_weights="corda"``. The decomposition and the covariances can be cached in files with
PEFT's keys (``{name}.eigens.S_WC`` ...; ``{name}`` for covariances), so either library reads the other's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm  # type: ignore[import-untyped]  # tqdm ships no type stubs
from transformers.pytorch_utils import Conv1D

from peftkit.errors import ArgumentTypeError, ConfigError, UsageError
from peftkit.methods.lora.calibration import linear_targets, model_device
from peftkit.targeting import pattern_value

__all__ = ["CordaEigens", "corda_factors", "preprocess_corda"]

#: Temporary attributes preprocessing leaves on target modules (removed with ``prune_temporary_fields``).
_TEMPORARY = ("sample_count", "covariance_matrix", "corda_method", "rank")


@dataclass
class CordaEigens:
    """One layer's cropped decomposition: ``S_WC (r,)``, ``U_WC (out, r)``, ``V_WC (in, r)`` (PEFT's names)."""

    S_WC: torch.Tensor
    U_WC: torch.Tensor
    V_WC: torch.Tensor


def corda_targets(model: nn.Module, config: Any) -> Iterator[tuple[str, Any]]:
    """The Linear / Conv1D modules ``config`` adapts (:func:`~peftkit.methods.lora.calibration.linear_targets`).

    Raises:
        ConfigError: ``config.target_modules`` is unset or ``"all-linear"`` (name the layers to decompose).
    """
    if config.target_modules is None or config.target_modules == "all-linear":
        raise ConfigError("preprocess_corda needs target_modules naming the layers (not None or 'all-linear').")
    return linear_targets(model, config)


def _model_device(model: nn.Module) -> torch.device:
    return model_device(model) or next(iter(model.parameters())).device


@torch.no_grad()
def preprocess_corda(
    model: nn.Module,
    lora_config: Any,
    run_model: Callable[[], Any] | None = None,
    hooked_model: nn.Module | None = None,
) -> None:
    """Attach ``eigens`` (:class:`CordaEigens`) to every module ``lora_config`` targets, for
    ``get_peft_model(model, lora_config)`` with ``init_lora_weights="corda"`` to consume.

    The covariance of each target's input is accumulated over ``run_model()`` (a callable that runs ``model``, or
    ``hooked_model``, on sample data; the samples should span the input space: roughly ``in / tokens * 128`` of
    them), unless ``corda_config.cache_file`` or ``covariance_file`` exists, in which case it is read from there.
    Costs one ``in x in`` float32 matrix per target while it runs.

    Args:
        model: The model that will receive the adapter.
        lora_config: A ``LoraConfig`` with ``corda_config`` set.
        run_model: Runs the model on calibration data; may be ``None`` only when a cache file exists.
        hooked_model: The model the hooks observe (default ``model``); its statistics are copied to ``model``'s
            modules of the same name.

    Raises:
        ConfigError: no ``corda_config``; no ``run_model`` and no cache; non-finite inputs or covariances.
    """
    cfg = lora_config.corda_config
    if cfg is None:
        raise ConfigError("preprocess_corda needs lora_config.corda_config (a CordaConfig).")
    device = _model_device(model)
    if cfg.cache_file is not None and _exists(cfg.cache_file):
        cache = torch.load(cfg.cache_file, map_location=device, weights_only=True)
        for name, module in corda_targets(model, lora_config):
            fields = {part: cache[f"{name}.eigens.{part}"] for part in ("S_WC", "U_WC", "V_WC")}
            module.eigens = CordaEigens(**fields)
        return
    if cfg.corda_method not in ("ipm", "kpm"):
        raise ConfigError(f"CordaConfig.corda_method must be 'ipm' or 'kpm', got {cfg.corda_method!r}.")
    for name, module in corda_targets(model, lora_config):
        module.corda_method = cfg.corda_method
        module.rank = int(pattern_value(name, lora_config.rank_pattern, lora_config.r))
    collect_covariances(model, lora_config, run_model, hooked_model)
    targets = [module for _, module in corda_targets(model, lora_config)]
    for module in tqdm(targets, desc="CorDA decomposition") if cfg.verbose else targets:
        full = decompose_layer(module)
        module.eigens = crop_eigens(full, module.rank, module.corda_method, device)
        if cfg.prune_temporary_fields:
            for attr in _TEMPORARY:
                if hasattr(module, attr):
                    delattr(module, attr)
    if cfg.cache_file is not None:
        cache = {
            f"{name}.eigens.{part}": getattr(module.eigens, part)
            for name, module in corda_targets(model, lora_config)
            for part in ("S_WC", "U_WC", "V_WC")
        }
        _save(cache, cfg.cache_file)


def _exists(path: str | os.PathLike) -> bool:
    return os.path.exists(path) and os.path.getsize(path) > 0


def _save(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    torch.save(tensors, path)


def _covariance_hook(use_float16: bool) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
    """Forward hook adding ``X^T X`` of the call's input (scaled by its largest entry) to the module's sum."""

    def hook(module: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x = inputs[0].detach().squeeze(0)
        x = x.reshape(-1, x.shape[-1])  # (tokens, in) whatever the batch layout
        x = x if use_float16 else x.float()
        x = x / torch.max(x).abs()
        if not torch.isfinite(x).all():
            raise ConfigError("preprocess_corda: a target's input holds NaN or inf; check the calibration data.")
        covariance = x.t() @ x
        if not torch.isfinite(covariance).all():
            raise ConfigError("preprocess_corda: an input covariance overflowed; set use_float16_for_covariance=False.")
        module.sample_count += 1
        module.covariance_matrix = module.covariance_matrix + covariance

    return hook


def collect_covariances(
    model: nn.Module, config: Any, run_model: Callable[[], Any] | None, hooked_model: nn.Module | None
) -> None:
    """Set ``covariance_matrix`` (mean ``X^T X`` per call, ``(in, in)``) and ``sample_count`` on each target of
    ``model``, from ``corda_config.covariance_file`` when it exists, else by running ``run_model`` with hooks
    (removed afterwards, also on error). The covariances are written to ``covariance_file`` when it is set."""
    cfg = config.corda_config
    if cfg.covariance_file is not None and _exists(cfg.covariance_file):
        stored = torch.load(cfg.covariance_file, map_location=_model_device(model), weights_only=True)
        for name, module in corda_targets(model, config):
            module.covariance_matrix = stored[name]
        return
    if run_model is None:
        raise ConfigError("preprocess_corda needs run_model when neither cache_file nor covariance_file exists.")
    observed = model if hooked_model is None else hooked_model
    observed.eval()
    hook = _covariance_hook(cfg.use_float16_for_covariance)
    handles = []
    for _, module in corda_targets(observed, config):
        module.sample_count, module.covariance_matrix = 0, 0
        handles.append(module.register_forward_hook(hook))
    try:
        run_model()
    finally:
        for handle in handles:
            handle.remove()
    if observed is not model:
        seen = dict(corda_targets(observed, config))
        for name, module in corda_targets(model, config):
            if name in seen:
                module.sample_count = seen[name].sample_count
                module.covariance_matrix = seen[name].covariance_matrix
    for name, module in corda_targets(model, config):
        if not getattr(module, "sample_count", 0):
            raise UsageError(f"preprocess_corda: run_model never ran the target {name!r}; feed data that reaches it.")
        module.covariance_matrix = module.covariance_matrix / module.sample_count
    if cfg.covariance_file is not None:
        _save({name: module.covariance_matrix for name, module in corda_targets(model, config)}, cfg.covariance_file)


def damped_inverse(covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C', C'^{-1})`` with ``C' = C + d * mean(diag C) * I``, ``d`` from 0.01 doubled until the inverse is
    accurate (``||C' C'^{-1} - I||_F < 0.05``)."""
    eye = torch.eye(covariance.shape[0], device=covariance.device, dtype=covariance.dtype)
    mean_diag = torch.mean(torch.diag(covariance))
    damp = 0.01
    while True:
        damped = covariance + eye * mean_diag * damp
        inverse = torch.linalg.inv(damped)
        if torch.dist(damped @ inverse, eye).item() < 0.05:
            return damped, inverse
        damp *= 2


def decompose_layer(module: Any) -> CordaEigens:
    """The full (uncropped) decomposition ``W = U S V^T`` of ``module``'s weight ``(out, in)`` (Conv1D's
    transposed) against its ``covariance_matrix``: ``U (out, k)``, ``S (k,)``, ``V (in, k)``, ``k = min(out, in)``."""
    if not hasattr(module, "covariance_matrix"):
        raise UsageError("CorDA: the module has no covariance_matrix; call preprocess_corda, not this function.")
    weight = module.weight.detach().float()
    weight = weight.T if isinstance(module, Conv1D) else weight
    damped, inverse = damped_inverse(module.covariance_matrix.float())
    U, S, Vh = torch.linalg.svd(weight @ damped, full_matrices=False)
    return CordaEigens(S_WC=S, U_WC=U.cpu(), V_WC=(Vh @ inverse).T.cpu())


def crop_eigens(full: CordaEigens, rank: int, method: str, device: torch.device) -> CordaEigens:
    """The ``rank`` largest (``"ipm"``) or smallest (``"kpm"``) components of ``full`` (copies, on ``device``)."""
    keep = slice(None, rank) if method == "ipm" else slice(-rank, None)
    return CordaEigens(
        S_WC=full.S_WC[keep].clone(),
        U_WC=full.U_WC[:, keep].clone().to(device),
        V_WC=full.V_WC[:, keep].clone().to(device),
    )


def corda_factors(
    eigens: CordaEigens, r: int, scaling: float, out_features: int, in_features: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = sqrt(S / s) V^T (r, in)`` and ``B = U sqrt(S / s) (out, r)`` in float32, so that ``s B A = U S V^T``.

    Raises:
        ConfigError: the decomposition holds NaN / inf, or its shapes do not match the layer (``r``, ``in``,
            ``out``): it was made for another model or rank.
    """
    U, S, V = eigens.U_WC.float(), eigens.S_WC.float(), eigens.V_WC.float()
    if not all(torch.isfinite(t).all() for t in (U, S, V)):
        raise ConfigError("CorDA: the decomposition holds NaN or inf; recompute it with other calibration data.")
    expected = {"U_WC": (out_features, r), "S_WC": (r,), "V_WC": (in_features, r)}
    for part, shape in expected.items():
        found = tuple(getattr(eigens, part).shape)
        if found != shape:
            raise ConfigError(
                f"CorDA: {part} has shape {found}, the layer needs {shape}; run preprocess_corda with the same "
                "model and LoraConfig (r, rank_pattern) as get_peft_model, or rebuild the cache file."
            )
    root = torch.sqrt(S / scaling)
    return (V.T * root[:, None]).contiguous(), (U * root[None, :]).contiguous()


def corda_decomposition(
    base: nn.Module | None, weight: torch.Tensor, r: int, scaling: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CorDA's ``(A (r, in), B (out, r), residual W - s B A (out, in))`` for ``weight (out, in)`` of ``base``,
    from the ``eigens`` :func:`preprocess_corda` left on ``base`` (consumed: deleted afterwards, as in PEFT).

    Raises:
        ArgumentTypeError: the base weight is not float32 / float16 / bfloat16 (a quantized base).
        UsageError: ``base`` has no ``eigens`` (``preprocess_corda`` was not run on this model).
        ConfigError: see :func:`corda_factors`.
    """
    dtype = getattr(base, "weight", weight).dtype
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ArgumentTypeError(
            f"CorDA initialises from a float32, float16 or bfloat16 weight, this one is {dtype}; initialise on the "
            "unquantized model and quantize the residual base afterwards."
        )
    eigens = getattr(base, "eigens", None)
    if base is None or eigens is None:
        raise UsageError(
            "init_lora_weights='corda': this layer has no CorDA decomposition; call "
            "peftkit.tuners.lora.corda.preprocess_corda(model, config, run_model=...) before get_peft_model "
            "(also before loading a CorDA adapter that was saved without path_initial_model_for_weight_conversion)."
        )
    A, B = corda_factors(eigens, r, scaling, weight.shape[0], weight.shape[1])
    del base.eigens
    w = weight.detach().float()
    return A, B, w - (scaling * B.to(w.device)) @ A.to(w.device)  # the reference's rounding order
