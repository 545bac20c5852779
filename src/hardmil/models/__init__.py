"""Model registry: one explicit dict, one forward contract (:class:`~hardmil.models.base.MILOutput`)."""

from __future__ import annotations

import dataclasses

from hardmil.models.abmil import ABMIL, GatedABMIL
from hardmil.models.base import MILModel, MILOutput, check_ranges
from hardmil.models.clam import CLAM, CLAMMB
from hardmil.models.dsmil import DSMIL
from hardmil.models.dtfd import DTFD
from hardmil.models.ibmil import IBMIL
from hardmil.models.li2019 import Li2019
from hardmil.models.mamba2d import Mamba2DMIL
from hardmil.models.meanmax import MaxMIL, MeanMIL
from hardmil.models.mhim import MHIM
from hardmil.models.r2t import R2TMIL
from hardmil.models.transmil import TransMIL

MODELS: dict[str, type[MILModel]] = {
    "abmil": ABMIL,
    "gabmil": GatedABMIL,
    "li2019": Li2019,
    "clam_sb": CLAM,
    "clam_mb": CLAMMB,
    "dsmil": DSMIL,
    "transmil": TransMIL,
    "dtfd": DTFD,
    "ibmil": IBMIL,
    "r2tmil": R2TMIL,
    "mamba2d": Mamba2DMIL,
    "mhim": MHIM,
    "meanmil": MeanMIL,
    "maxmil": MaxMIL,
}

__all__ = ["MODELS", "MILModel", "MILOutput", "build_model", "model_config"]


def model_config(name: str, **params):
    """The frozen config of model ``name`` with ``params`` overriding its defaults."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {sorted(MODELS)}")
    cls = MODELS[name].config_class
    params = MODELS[name].translate_params(params)
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ValueError(f"model {name!r} has no parameter(s) {unknown}; valid: {sorted(valid)}")
    cfg = cls(**params)
    check_ranges(cfg, f"model {name!r}")
    return cfg


def build_model(name: str, **params) -> MILModel:
    """Build model ``name`` from its default config updated with ``params``."""
    cfg = model_config(name, **params)
    return MODELS[name](cfg)
