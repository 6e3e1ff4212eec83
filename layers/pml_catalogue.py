"""Any pytorch-metric-learning (PML) loss or miner by name: 'pml:<Class>' with keyword arguments from a string.

`MODEL.METRIC_LOSS_TYPE pml:TripletMarginLoss LOSS.PML_KWARGS "{'margin': 0.1}"` builds
`pytorch_metric_learning.losses.TripletMarginLoss(margin=0.1)`; `LOSS.MINER pml:MultiSimilarityMiner` puts a
miner in front of it. `num_classes` and `embedding_size` are filled in for the classes that take them (proxy
and classification losses). A keyword value 'pml:<Class>' (or ['pml:<Class>', {kwargs}]) builds a PML
distance, reducer or regularizer, e.g. "{'distance': 'pml:CosineSimilarity'}". Learnable parameters of the
built loss (proxies, class weights, betas) are parameters of the criterion and join the optimizer like ours.
"""

from __future__ import annotations

import ast
import inspect
from typing import Any

import torch
from torch import nn

from config.errors import ConfigError
from layers.term import LossTerm

PREFIX = "pml:"

# Base classes and losses that do not train from (embeddings, labels) alone
_NOT_LOSSES = {"BaseMetricLossFunction", "GenericPairLoss", "VICRegLoss"}
_NOT_MINERS = {"BaseMiner", "EmbeddingsAlreadyPackagedAsTriplets"}


def _pml():
    try:
        import pytorch_metric_learning  # noqa: F401
        from pytorch_metric_learning import (
            distances,
            losses,
            miners,
            reducers,
            regularizers,
        )
    except ImportError:
        raise ConfigError(
            "'pml:' losses and miners need pytorch-metric-learning, a dependency of this package: "
            "pip install -e . (or pip install pytorch-metric-learning)"
        ) from None
    return losses, miners, distances, reducers, regularizers


def available_losses() -> list[str]:
    """Names of the installed PML loss classes usable as MODEL.METRIC_LOSS_TYPE pml:<name>."""
    losses = _pml()[0]
    return sorted(
        name
        for name, obj in vars(losses).items()
        if inspect.isclass(obj) and issubclass(obj, losses.BaseMetricLossFunction) and name not in _NOT_LOSSES
    )


def available_miners() -> list[str]:
    """Names of the installed PML miner classes usable as LOSS.MINER pml:<name>."""
    miners = _pml()[1]
    return sorted(
        name
        for name, obj in vars(miners).items()
        if inspect.isclass(obj) and issubclass(obj, miners.BaseMiner) and name not in _NOT_MINERS
    )


def _helper_classes() -> dict[str, type]:
    """PML distances, reducers and regularizers by class name (values of keyword arguments)."""
    _, _, distances, reducers, regularizers = _pml()
    found = {}
    for module in (distances, reducers, regularizers):
        found.update({name: obj for name, obj in vars(module).items() if inspect.isclass(obj)})
    return found


def parse_kwargs(key: str, text: str) -> dict[str, Any]:
    """The dict literal of config key `key` ('' = no arguments); a ConfigError naming the key otherwise."""
    text = text.strip()
    if not text:
        return {}
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"{key} = {text!r} is not a dict literal; expected e.g. \"{{'margin': 0.1}}\"") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{key} = {text!r}; expected a dict with string keys, e.g. \"{{'margin': 0.1}}\"")
    return {name: _build_value(key, name, v) for name, v in value.items()}


def _build_value(key: str, name: str, value: Any) -> Any:
    """'pml:<Class>' or ['pml:<Class>', {...}] as the PML object it names; any other value as it is."""
    spec, kwargs = None, {}
    if isinstance(value, str) and value.startswith(PREFIX):
        spec = value
    elif (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and isinstance(value[0], str)
        and value[0].startswith(PREFIX)
        and isinstance(value[1], dict)
    ):
        spec, kwargs = value
    if spec is None:
        return value
    classes = _helper_classes()
    class_name = spec[len(PREFIX) :]
    if class_name not in classes:
        raise ConfigError(
            f"{key}: '{name}': {spec!r} is not a pytorch-metric-learning distance, reducer or "
            f"regularizer; available: {', '.join(sorted(classes))}"
        )
    return _construct(classes[class_name], kwargs, f"{key} ('{name}')")


def _construct(cls: type, kwargs: dict, where: str) -> Any:
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
        raise ConfigError(
            f"{where}: {cls.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: "
            f"{err}; its parameters: {', '.join(params) or 'none'}"
        ) from None


def _lookup(kind: str, key: str, value: str, names: list[str]) -> str:
    name = value[len(PREFIX) :] if value.startswith(PREFIX) else value
    if name not in names:
        raise ConfigError(
            f"{key} = {value!r}: no pytorch-metric-learning {kind} of that name; available: "
            f"{', '.join(PREFIX + n for n in names)}"
        )
    return name


def build_pml_loss(spec: str, kwargs_text: str, num_classes: int, feat_dim: int) -> nn.Module:
    """The PML loss of 'pml:<LossClass>' with LOSS.PML_KWARGS (num_classes/embedding_size filled in)."""
    losses = _pml()[0]
    name = _lookup("loss", "MODEL.METRIC_LOSS_TYPE", spec, available_losses())
    cls = getattr(losses, name)
    kwargs = parse_kwargs("LOSS.PML_KWARGS", kwargs_text)
    params = inspect.signature(cls.__init__).parameters
    if "num_classes" in params:
        kwargs.setdefault("num_classes", num_classes)
    if "embedding_size" in params:
        kwargs.setdefault("embedding_size", feat_dim)
    return _construct(cls, kwargs, f"MODEL.METRIC_LOSS_TYPE {spec} with LOSS.PML_KWARGS")


def build_pml_miner(spec: str, kwargs_text: str) -> nn.Module:
    """The PML miner of LOSS.MINER 'pml:<MinerClass>' with LOSS.MINER_KWARGS."""
    miners = _pml()[1]
    if not spec.startswith(PREFIX):
        raise ConfigError(
            f"LOSS.MINER = {spec!r}; expected '' or 'pml:<MinerClass>', one of: "
            f"{', '.join(PREFIX + n for n in available_miners())}"
        )
    name = _lookup("miner", "LOSS.MINER", spec, available_miners())
    kwargs = parse_kwargs("LOSS.MINER_KWARGS", kwargs_text)
    return _construct(getattr(miners, name), kwargs, f"LOSS.MINER {spec} with LOSS.MINER_KWARGS")


class PMLMetricLoss(LossTerm):
    """A PML loss (optionally fed by a PML miner) behind this engine's metric-loss call: (feats, labels) -> loss.

    The value is whatever the PML class defines (see its documentation); its learnable parameters are ours.
    PML declares no optimizer group for them, so `parameter_groups` reads PML's attribute names, a
    convention its losses follow: `proxies` (ProxyAnchorLoss, ProxyNCALoss, ManifoldLoss) -> 'proxy',
    `beta` (MarginLoss with learn_beta) -> 'beta', biases -> 'bias', the rest (class weights `W`, `fc`, ...)
    -> 'loss'.
    """

    inputs = ("feat",)
    stat_names: tuple[str, ...] = ()

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None):
        super().__init__()
        self.loss, self.miner = loss, miner

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """PML's proxies in 'proxy', its learnable betas in 'beta', the rest by the default rule."""
        group_of_name = {"proxies": "proxy", "beta": "beta"}
        declared: dict[str, list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            group = group_of_name.get(name.rsplit(".", 1)[-1])
            if group is not None:
                declared.setdefault(group, []).append(param)
        return self._groups_with(declared)

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        feats = feats if feats.dtype == torch.float64 else feats.float()
        indices = self.miner(feats, labels) if self.miner is not None else None
        return self.loss(feats, labels, indices)
