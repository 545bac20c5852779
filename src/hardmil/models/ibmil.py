"""IBMIL: interventional bag MIL with a confounder dictionary (Lin et al., CVPR 2023).

Paper: Lin, Yu, Zhang, Wang, Zhang, Chen, Li, Tian. Interventional Bag Multi-Instance Learning on
Whole-Slide Pathological Images. CVPR 2023.
Reference code: https://github.com/HHHedo/IBMIL (no licence; read for behaviour only), ``Dattention_ori``
in ``models/abmil.py`` and its confounder generation script; and MHIM-MIL's ``modules/abmil_ibmil.py``.

Shapes: ``x`` (batch_size, bag_size, in_dim); ``mask`` (batch_size, bag_size).

Three stages, each its own rule in the workflow:
1. a plain aggregator (AB-MIL) is trained on the fold;
2. its bag embeddings of the fold's training bags are clustered into K confounders as the reference's
   clustering script does (``hardmil.mining.confounders``; a DAG edge from the trained baseline of the *same*
   fold): k-means on the L2-normalised embeddings (k random embeddings as initial centres, 20 iterations, a
   fixed seed), each confounder the mean of its cluster's raw embeddings;
3. this model is trained with the dictionary fixed: the bag embedding ``z`` queries the confounders,
   ``A = softmax_K(W_k C (W_q z)^T / sqrt(128))``, the backdoor-adjusted feature ``sum_k A_k C_k`` is
   concatenated to ``z`` and classified by ``Linear(2 * 512, C)``.

The AB-MIL part is ``Linear(D, 512) + ReLU + Dropout(0.25)`` and tanh attention 512 -> 128 -> 1 (as our
``abmil``); ``act: gelu`` switches the projection to GELU, as the MHIM-MIL reference's training configs
(``feat_cls.yaml``, ``feat_surv.yaml``) run it (``config/paper.yaml`` selects it). Deliberate deviations: the
dictionary is a non-trainable buffer (the reference's default; its ``confounder_learn`` option is not offered);
a missing dictionary is an error, never a silent zero dictionary.

k-means (``hardmil.mining.confounders``; issue 25, item 6; argued, not switched): the reference clusters with faiss
(``faiss.Clustering`` on a flat L2 index, seed 66: k centroids drawn at random from the points by faiss's own C++
generator seeded with the fixed seed, 20 Lloyd iterations, empty clusters split), this project with scikit-learn's
Lloyd k-means, also k random points as centres, 20 iterations, its own seed. On embeddings with clear clusters both
find the same partition whatever the start (``tests/test_parity_baselines.py`` pins the centres against faiss's with
three seeds). On embeddings without clear clusters the result depends on the initial centres, and those come from
faiss's generator (its ``rand_perm`` over the points with its own RNG), which numpy / scikit-learn cannot draw
without reimplementing faiss's random number generator; matching there would need faiss itself, an optional native
dependency this project does not take (the fixture script uses it). Any k-means run is one draw of this
init-dependent procedure, so the two are equivalent in distribution, not per seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from hardmil.models.base import MILModel, MILOutput, init_xavier, instance_projection, masked_softmax, param


@dataclass(frozen=True)
class IBMILConfig:
    in_dim: int = param(1024, ge=1)
    n_classes: int = param(2, ge=2)
    hidden_dim: int = param(512, ge=1)
    attn_dim: int = param(128, ge=1)
    dropout: float = param(0.25, ge=0, lt=1)
    act: str = "relu"  # instance projection: 'relu' or 'gelu' (the reference's training config: gelu)
    confounder_dim: int = param(128, ge=1)  # IBMIL confounder_W_q / W_k: Linear(L, 128)
    n_confounders: int = param(8, ge=1)  # K: set from the dictionary the workflow builds


class IBMIL(MILModel):
    config_class = IBMILConfig

    def __init__(self, cfg: IBMILConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.feature = instance_projection(cfg.in_dim, d, cfg.dropout, act=cfg.act)
        self.attn = nn.Sequential(nn.Linear(d, cfg.attn_dim), nn.Tanh(), nn.Linear(cfg.attn_dim, 1))
        self.w_q = nn.Linear(d, cfg.confounder_dim)
        self.w_k = nn.Linear(d, cfg.confounder_dim)
        self.classifier = nn.Linear(2 * d, cfg.n_classes)
        self.register_buffer("confounders", torch.zeros(cfg.n_confounders, d))
        self.register_buffer("has_confounders", torch.tensor(False))
        init_xavier(self)

    def set_confounders(self, centres: np.ndarray | Tensor) -> None:
        c = torch.as_tensor(np.asarray(centres), dtype=torch.float32)
        if c.shape != self.confounders.shape:
            raise ValueError(f"confounder dictionary has shape {tuple(c.shape)}, the model expects "
                             f"{tuple(self.confounders.shape)} (n_confounders x hidden_dim)")
        self.confounders.copy_(c)
        self.has_confounders.fill_(True)

    def forward(self, x: Tensor, mask: Tensor | None = None, label: Tensor | None = None,
                coords: Tensor | None = None) -> MILOutput:
        if not bool(self.has_confounders):
            raise ValueError("IBMIL needs the confounder dictionary of its fold (set_confounders); none was set")
        h = self.feature(x)
        attn = masked_softmax(self.attn(h).squeeze(-1), mask)
        z = torch.einsum("bn,bnh->bh", attn, h)
        scores = self.w_q(z) @ self.w_k(self.confounders).T / math.sqrt(self.cfg.confounder_dim)  # [B, K]
        adjusted = torch.softmax(scores, dim=-1) @ self.confounders
        feat = torch.cat([z, adjusted], dim=-1)
        return MILOutput(logits=self.classifier(feat), attention=attn, embedding=feat)
