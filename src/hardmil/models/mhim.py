"""MHIM-MIL (v1) and MHIM-v2: masked hard instance mining with a momentum teacher (Tang et al.).

Papers: Tang, Zhang, Zhu, Wang, Lin, Ye. Multiple Instance Learning Framework with Masked Hard Instance
Mining for Whole Slide Image Classification. ICCV 2023; and the journal version "MHIM-v2" (Algorithms 1-2).
Reference code: https://github.com/DearCaat/MHIM-MIL (no licence; read for behaviour only). How the
reference's training differs from the paper's text is listed under "Deliberate deviations" below and in
config/README.md; parity with it is pinned by
``tests/test_parity_mhim.py`` (fixtures written from the reference by ``bench/parity_mhim.py``).

The framework wraps a registered baseline (no forked copy): the baseline provides ``embed`` (instance
projection + dropout), ``head(h, mask, label) -> MILOutput`` (everything after the embedding, with its own
auxiliary losses) and ``instance_scores(h, out, version)``. AB-MIL, gated AB-MIL, DSMIL and TransMIL provide
them (TransMIL scores from the class token's layer-1 Nystrom attention row). DSMIL inside MHIM is
the registered ``dsmil`` with whatever ``baseline_params`` say, teacher and student the same model as the baseline
checkpoint: ``prediction: mean`` is the reference's MHIM-internal DSMIL (0.5 bag + 0.5 max-instance logits,
predicted and trained on; ``config/paper.yaml`` selects it), ``prediction: bag`` the standalone one (bag-stream
prediction, 0.5 / 0.5 bag and max-instance losses). DSMIL's consistency loss is taken per class row of its [C, 512]
bag embedding and averaged over the C rows, as the reference does.

The reference's MHIM wraps its own internal baselines, which differ from its standalone ones: ``attn`` (AB-MIL with
a bias-free ReLU attention MLP) and ``selfattn`` (TransMIL without square padding before layer 1, PPEG padded to
7 x 7); its training config runs the instance projection with GELU. These are options of the registered models
(``baseline_params: {act: gelu, attention_act: relu, attention_bias: false}`` for AB-MIL, ``{act: gelu, padding:
ppeg}`` for TransMIL); the teacher checkpoint must be the baseline trained with the same options.

One training step on a bag (``forward`` with a label, in train mode):
1. The teacher (an EMA copy of the student, initialised from the trained baseline of the same fold) scores
   every instance without gradients: raw attention (v1) or the class-aware instance probability (v2),
   ``max_c softmax_c(W (a_i h_i))`` with the teacher's own classifier weights (the reference adds only ``b_0``
   to every class, which cancels under the softmax).
2. Masking of instance embeddings: high-score masking of a fraction ``mask_high`` (optionally randomly-high:
   candidates are the top ``ceil(N h / r)``, a random ``ceil(|cand| r)`` of them masked, ``r = mask_high_random``;
   ``r = 0.5`` is "top 2x, random half"; ``h / r > 1`` is capped as the reference: every instance is a candidate and
   a random ``ceil(N h)`` is masked; optional cosine decay of ``h`` to 0 over the schedule); v1 low-score masking
   ``mask_low`` and random masking ``mask_random`` (the rules draw in the reference's order: random, low, high; v1
   TransMIL scores are one row per head, fused by the reference's vote, ``head_fusion``); v2 random score masking: a
   random fraction ``rsm_ratio`` of the remaining instances is taken out and, with the Global Recycle Network,
   summarised into K tokens that are appended (without the GRN they are dropped: Table 9's "RSM" row). ``rsm_ratio``
   is the *masked* fraction: the reference's ``merge_ratio`` is the *kept* fraction, ``rsm_ratio = 1 -
   merge_ratio``. Of L remaining instances, ``int(L (1 - rsm_ratio))`` are kept, as the reference rounds (at least
   one is kept; ``rsm_mode: low`` masks the ``ceil(L rsm_ratio)`` lowest-scoring, as the reference's low mode).
3. GRN: K global queries (no gradient; updated after each training forward as an EMA of the GRN outputs,
   momentum ``grn_momentum``) cross-attend (8 heads x 64, one LayerNorm shared by the queries and the
   instances, as the reference; no biases on q/kv, dropout 0.1, output ``Linear(512, 512)``, no residual) to the
   randomly masked instances.
4. Loss = CE(student logits) + ``alpha`` x soft-target CE between ``softmax(teacher bag embedding / 0.1)``
   and ``log_softmax(student bag embedding / 1.0)``, summed over the embedding dimensions.
5. After the optimiser step (``after_step``), teacher <- ``m`` teacher + (1 - ``m``) student, every bag
   (``m`` optionally cosine-scheduled towards 1).
Inference: the student alone on every instance (the GRN only if ``grn_at_inference``).

Deliberate deviations and choices:
* A missing or mismatched teacher checkpoint is an error (the reference silently keeps a random teacher).
* ``teacher_dropout`` (default True: the reference runs the teacher in train mode, dropout active).
* ``rsm_ratio`` defaults to 0.8, the paper's "large proportion (e.g., 70% ~ 90%)" and the reference's option
  default (``merge_ratio`` 0.2); the reference README's recipe runs ``merge_ratio`` {0.8, 0.9}, i.e.
  ``rsm_ratio`` {0.2, 0.1} -- set it explicitly to run the code's recipe (config/baselines.yaml does).
* Config names: the flat field names below, or the plain nested names of :data:`NESTED_NAMES`
  (``mask.high_ratio``, ``mask.high_random_fraction``, ``mask.decay``, ``mask.low_ratio``, ``mask.random_ratio``
  (= ``rsm_ratio``), ``recycle.queries``, ``recycle.momentum``, ``consistency.weight``,
  ``consistency.temperature``, ``teacher.momentum``, ...).
* The GRN is computed by associativity (see :meth:`GlobalRecycleNetwork.forward`): same function, ~100x
  fewer FLOPs over the masked instances. The student embeds the whole bag once and takes the kept and recycled
  rows (the high-score-masked rows get no gradient).
  ``recycle.embedding_grad: false`` (``grn_embed_grad``) is a cost option, off by default: the recycled
  instances are embedded without gradient, so the student's instance projection learns from the kept
  instances only (the GRN's own weights still learn).
* ``keep_order`` (default ``shuffle``, the reference): the instances random score masking keeps are passed in
  the random draw's order, as the reference's ``Merge.masking``; ``bag`` keeps them in bag order (an AB-MIL student
  cannot tell; a TransMIL student's logits move by up to ~4 on the parity fixture). High-score masking keeps bag
  order in both (the reference's set difference).
* ``head_fusion`` (default ``vote``, the reference): v1 per-head scores (TransMIL) are fused by each head's top-k
  vote; ``mean`` takes the top-k of the head average instead (the masked sets then barely overlap).
* A bag every rule would mask entirely keeps its lowest-scoring instance (a one-instance bag is never masked
  empty). The reference would pass no instance on: with the GRN its student sees only the GRN token computed from
  nothing (its output bias), without it an empty attention pool. Declared, not switchable.
* Auxiliary loss weights of the wrapped baseline are the baseline's own (CLAM 0.7 / 0.3 with ``bag_weight``, DSMIL
  0.5 / 0.5 with ``max_loss_weight``; DSMIL ``prediction: mean`` has none). The reference weighs CE by
  ``main_alpha`` (1.0) and its baselines' auxiliary losses by ``aux_alpha``, which its configs leave at 0 for the
  standalone baselines (the CLAM instance loss and DSMIL max-instance loss are then ignored) and which MHIM uses for
  the consistency loss (``alpha`` here). Declared: the standalone baselines keep their papers' weights.
* ``recycle.stale_queries`` (``grn_stale_queries``, default True = the reference): the reference updates the GRN's
  queries in place (``.data``) right after its forward and before the backward, so the LayerNorm of the queries
  back-propagates with its saved input already moved by the EMA (``merge.py``, ``Merge.merge`` /
  ``update_q_ema``). Its gradient into ``grn.norm`` is thus slightly off; the project reproduces that by
  default (tests/test_recipe.py: the one-epoch trajectory of the reference's trainer matches within 1e-5 only
  so; with ``false`` the LayerNorm weights drift from it by ~1e-4 after 20 steps at momentum 0.9, and by
  ~1e-8 at the recipe's 0.9999). ``false`` back-propagates through the queries as they were in the forward.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardmil.models.assessment import TeacherAssessment
from hardmil.models.base import (
    MaskableBaseline,
    MILModel,
    MILOutput,
    field_range,
    in_range,
    init_xavier,
    param,
    range_text,
)


@dataclass(frozen=True)
class MHIMConfig:
    in_dim: int = param(1024, ge=1)
    n_classes: int = param(2, ge=1)
    baseline: str = "abmil"  # a registered model exposing embed / head / instance_scores
    baseline_params: dict = field(default_factory=dict)
    version: str = "v2"  # 'v1': raw attention scores; 'v2': class-aware instance probability
    score: str = "auto"  # 'auto' (by version), 'attention' or 'probability' (Table 8 swaps them inside v2)
    # masked fraction of the highest-scoring instances (v2 grid {0.01, 0.03, 0.05})
    mask_high: float = param(0.01, ge=0, lt=1)
    # paper defaults (Table 12: MHIM-v2 uses RHSM and the decay); the reference README recipe runs 1.0 / False
    # r: fraction of the top ceil(N h / r) candidates masked (0.5 = RHSM)
    mask_high_random: float = param(0.5, gt=0, le=1)
    mask_high_cosine: bool = True  # cosine decay of mask_high to 0 over all training steps (mrh_sche)
    mask_low: float = param(0.0, ge=0, lt=1)  # v1: masked fraction of the lowest-scoring instances
    mask_random: float = param(0.0, ge=0, lt=1)  # v1: masked fraction drawn at random
    # v2: random score masking, the masked fraction of the instances left after high-score masking; recycled by the
    # GRN when it is on, dropped when it is off. Paper: "70% ~ 90%" (0.8 = the reference's option default
    # merge_ratio 0.2); the README recipe's merge_ratio {0.8, 0.9} is rsm_ratio {0.2, 0.1}.
    rsm_ratio: float = param(0.8, ge=0, le=1)
    rsm_mode: str = "random"  # 'random' (RSM) or 'low': the lowest-scoring share instead (Table 9 "LSM+GRN")
    # order of the instances random score masking keeps: 'shuffle' (the reference: the random draw's order) or
    # 'bag' (their order in the bag); only order-aware students (TransMIL's PPEG) tell them apart
    keep_order: str = "shuffle"
    # v1 scores with one row per head (TransMIL): 'vote' (the reference: each head's top-k votes, the most-voted
    # k are taken) or 'mean' (the top-k of the mean over heads)
    head_fusion: str = "vote"
    grn: bool = True  # v2: Global Recycle Network
    grn_tokens: int = param(1, ge=1)  # K (grid {1, 5, 10})
    grn_heads: int = param(8, ge=1)
    grn_head_dim: int = param(64, ge=1)
    grn_dropout: float = param(0.1, ge=0, lt=1)
    grn_momentum: float = param(0.9999, ge=0, le=1)  # merge_mm (README recipe)
    grn_at_inference: bool = False
    grn_embed_grad: bool = True  # False: the recycled instances' embeddings carry no gradient (cost option)
    grn_stale_queries: bool = True  # the reference's in-place query update before the backward (module docstring)
    alpha: float = param(0.5, ge=0)  # consistency weight (aux_alpha, README recipe)
    temp_teacher: float = param(0.1, gt=0)
    temp_student: float = param(1.0, gt=0)
    momentum: float = param(0.9997, ge=0, le=1)  # teacher EMA (v2 default; v1 0.9999)
    momentum_cosine: bool = False  # cosine schedule of the EMA momentum towards 1 (mm_sche)
    teacher_dropout: bool = True
    # Table 10 ablations: 'baseline' = loaded from the same fold's trained baseline (a DAG edge; the default),
    # 'none' = the teacher starts as a copy of the untrained student (explicitly requested, never a fallback)
    teacher_init: str = "baseline"
    # 'ema' = momentum teacher (default); 'student' = no separate teacher: the student scores its own bag
    teacher_update: str = "ema"
    init_student: str = "none"  # 'none' (v2) or 'fc' (v1: copy the baseline's instance projection)



# Plain nested names (config: ``params: {mask: {high_ratio: 0.03}, ...}``) -> MHIMConfig fields.
NESTED_NAMES = {
    "mask": {"high_ratio": "mask_high", "high_random_fraction": "mask_high_random", "decay": "mask_high_cosine",
             "low_ratio": "mask_low", "random_ratio": "rsm_ratio", "v1_random_ratio": "mask_random",
             "random_mode": "rsm_mode", "score": "score", "keep_order": "keep_order", "head_fusion": "head_fusion"},
    "recycle": {"enabled": "grn", "queries": "grn_tokens", "momentum": "grn_momentum", "heads": "grn_heads",
                "head_dim": "grn_head_dim", "dropout": "grn_dropout", "at_inference": "grn_at_inference",
                "embedding_grad": "grn_embed_grad", "stale_queries": "grn_stale_queries"},
    "consistency": {"weight": "alpha", "temperature": "temp_teacher", "student_temperature": "temp_student"},
    "teacher": {"momentum": "momentum", "momentum_cosine": "momentum_cosine", "dropout": "teacher_dropout",
                "init": "teacher_init", "update": "teacher_update"},
}


def flatten_params(params: dict) -> dict:
    """Translate the nested plain names of :data:`NESTED_NAMES` into MHIMConfig fields (flat names pass). A nested
    value out of its field's declared range is an error naming the key as written (``mask.high_ratio``)."""
    ranges = {f.name: field_range(f) for f in dataclasses.fields(MHIMConfig)}
    flat = {}
    for key, value in params.items():
        if key in NESTED_NAMES and isinstance(value, dict):
            unknown = sorted(set(value) - set(NESTED_NAMES[key]))
            if unknown:
                raise ValueError(f"mhim: unknown {key}.* parameter(s) {unknown}; valid: {sorted(NESTED_NAMES[key])}")
            for sub, v in value.items():
                name = NESTED_NAMES[key][sub]
                if name in params or name in flat:
                    raise ValueError(f"mhim: {key}.{sub} and {name} both given")
                if ranges.get(name) and not in_range(v, ranges[name]):
                    raise ValueError(f"model 'mhim': {key}.{sub} = {v!r} is out of range "
                                     f"(must be {range_text(ranges[name])})")
                flat[name] = v
        else:
            flat[key] = value
    return flat


def rsm_count(n: int, ratio: float, mode: str = "random") -> int:
    """How many of ``n`` remaining instances random score masking takes out, rounded as the reference: it keeps
    ``int(n merge_ratio)`` (``merge_ratio = 1 - ratio``) in random mode and masks ``ceil(n ratio)`` in low mode;
    at least one instance is kept. The fractions are rounded to 12 digits first, so ``1 - 0.9`` keeps 10 % of 10
    (one instance), as the reference's ``merge_ratio`` 0.1 does."""
    if mode == "low":
        out = math.ceil(round(n * ratio, 9))
    else:
        out = n - int(n * round(1 - ratio, 12))
    return max(0, min(n - 1, out))


def consistency_loss(student: Tensor, teacher: Tensor, groups: int, temp_teacher: float,
                     temp_student: float) -> Tensor:
    """Soft-target cross-entropy between ``softmax(teacher / temp_teacher)`` and ``log_softmax(student /
    temp_student)`` over the embedding dimensions, for bag embeddings of ``groups`` rows (DSMIL: C class rows)
    flattened: summed over the dimensions and averaged over the rows, as the reference."""
    t, z = teacher.reshape(groups, -1), student.reshape(groups, -1)
    target = torch.softmax(t / temp_teacher, dim=-1)
    return -(target * F.log_softmax(z / temp_student, dim=-1)).sum(-1).mean()


def top_instances(score: Tensor, heads: Tensor | None, k: int, largest: bool) -> Tensor:
    """The ``k`` highest (``largest``) or lowest scoring instances. ``heads`` [H, N] (per-head scores, v1 TransMIL)
    fuses the heads by vote, as the reference: every head's own top-k gets one vote per instance and the k
    most-voted instances are taken (``torch.topk`` unsorted, as the reference calls it, so that a random subset
    drawn from the candidates below is the reference's too). Without ``heads``: the top-k of ``score``, sorted."""
    if heads is None:
        return score.topk(k, largest=largest).indices
    picked = heads.topk(k, dim=-1, largest=largest, sorted=False).indices
    votes = torch.zeros_like(heads).scatter_(-1, picked, 1.0).sum(0)
    return votes[None].topk(k, sorted=False).indices[0]


def mask_candidates(score: Tensor, heads: Tensor | None, ratio: float, largest: bool,
                    random_fraction: float = 1.0) -> Tensor:
    """Instances one masking rule takes out, as the reference's ``select_mask_fn``: the top ``ceil(N ratio / r)``
    (``r`` = ``random_fraction``), of which a random ``ceil(|cand| r)`` when ``r < 1``. When ``ratio / r > 1`` the
    reference caps: every instance is a candidate and a random ``ceil(N ratio)`` of them is taken."""
    n = score.shape[-1]
    frac = ratio / random_fraction
    if frac > 1:
        frac, random_fraction = 1.0, ratio
    cand = top_instances(score, heads, min(n, math.ceil(n * frac)), largest)
    if random_fraction < 1:
        cand = cand[torch.randperm(len(cand), device=score.device)[: math.ceil(len(cand) * random_fraction)]]
    return cand


def cosine(start: float, end: float, step: int, total: int) -> float:
    """Per-iteration cosine from ``start`` to ``end`` over ``total`` steps (timm-style, as the reference)."""
    t = min(step, total) / max(total, 1)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))


class GlobalRecycleNetwork(nn.Module):
    def __init__(self, dim: int, cfg: MHIMConfig):
        super().__init__()
        inner = cfg.grn_heads * cfg.grn_head_dim
        self.heads, self.head_dim = cfg.grn_heads, cfg.grn_head_dim
        self.norm = nn.LayerNorm(dim)  # one LayerNorm for queries and instances, as the reference
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.attn_drop = nn.Dropout(cfg.grn_dropout)
        self.out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(cfg.grn_dropout))
        bound = math.sqrt(6.0 / (3 * 256 + dim))  # VPT-style uniform init of the queries (reference)
        self.register_buffer("queries", torch.empty(cfg.grn_tokens, dim).uniform_(-bound, bound))
        self.stale_queries = cfg.grn_stale_queries

    def forward(self, masked: Tensor) -> Tensor:
        """masked [M, dim] -> K recycled tokens [K, dim].

        Computed by associativity, never forming the [M, 2 x heads x head_dim] keys and values:
        ``q . (W_k x) = (W_k^T q) . x`` and ``sum_m a_m W_v x_m = W_v sum_m a_m x_m``. The cost over the M
        masked instances is then O(M dim heads K) instead of O(M dim 2 heads head_dim) -- the same function and
        gradients (up to float rounding; tested against the explicit form), 100x fewer FLOPs for K = 1.
        """
        k_, dim = self.queries.shape
        heads, hd = self.heads, self.head_dim
        # the queries are updated in place right after this forward, before the backward: a copy back-propagates
        # through the queries of this forward; the buffer itself through the updated ones, as the reference does
        src = self.queries if self.stale_queries else self.queries.clone()
        q = self.to_q(self.norm(src)).reshape(k_, heads, hd).transpose(0, 1)  # [H, K, hd]
        w_k, w_v = self.to_kv.weight.reshape(2, heads, hd, dim).unbind(0)  # [H, hd, dim] each
        xn = self.norm(masked)  # [M, dim]
        q_in = (q @ w_k) * hd**-0.5  # [H, K, dim]: the queries moved into input space
        attn = self.attn_drop(torch.softmax(q_in @ xn.T, dim=-1))  # [H, K, M]
        ctx = (attn @ xn) @ w_v.transpose(1, 2)  # [H, K, dim] -> [H, K, hd]
        return self.out(ctx.transpose(0, 1).reshape(k_, -1))

    def forward_explicit(self, masked: Tensor) -> Tensor:
        """The textbook form (keys and values for every instance); kept to test :meth:`forward` against."""
        k_, _ = self.queries.shape
        q = self.to_q(self.norm(self.queries.clone())).reshape(k_, self.heads, self.head_dim).transpose(0, 1)
        k, v = self.to_kv(self.norm(masked)).chunk(2, dim=-1)
        k = k.reshape(-1, self.heads, self.head_dim).transpose(0, 1)
        v = v.reshape(-1, self.heads, self.head_dim).transpose(0, 1)
        attn = self.attn_drop(torch.softmax(q @ k.transpose(-1, -2) * self.head_dim**-0.5, dim=-1))
        return self.out((attn @ v).transpose(0, 1).reshape(k_, -1))


class MHIM(MILModel):
    config_class = MHIMConfig
    translate_params = staticmethod(flatten_params)

    def __init__(self, cfg: MHIMConfig):
        super().__init__()
        from hardmil.models import build_model

        if cfg.version not in ("v1", "v2"):
            raise ValueError(f"version must be 'v1' or 'v2', got {cfg.version!r}")
        if cfg.score not in ("auto", "attention", "probability") or cfg.rsm_mode not in ("random", "low"):
            raise ValueError(f"score must be auto/attention/probability and rsm_mode random/low, "
                             f"got {cfg.score!r} / {cfg.rsm_mode!r}")
        if cfg.keep_order not in ("shuffle", "bag") or cfg.head_fusion not in ("vote", "mean"):
            raise ValueError(f"keep_order must be 'shuffle' or 'bag' and head_fusion 'vote' or 'mean', "
                             f"got {cfg.keep_order!r} / {cfg.head_fusion!r}")
        if cfg.teacher_init not in ("baseline", "none") or cfg.teacher_update not in ("ema", "student"):
            raise ValueError(f"teacher_init must be 'baseline' or 'none' and teacher_update 'ema' or 'student', "
                             f"got {cfg.teacher_init!r} / {cfg.teacher_update!r}")
        self.cfg = cfg
        self.student = build_model(cfg.baseline, **{**cfg.baseline_params, "in_dim": cfg.in_dim,
                                                     "n_classes": cfg.n_classes})
        if not isinstance(self.student, MaskableBaseline):  # the declared contract, checked once at build time
            missing = [h for h in ("embed", "head", "instance_scores", "embedding_groups")
                       if not hasattr(self.student, h)]
            raise ValueError(f"MHIM cannot wrap {cfg.baseline!r}: it does not implement MaskableBaseline "
                             f"(hardmil.models.base; missing: {', '.join(missing)})")
        dim = self.student.cfg.hidden_dim
        self.grn = GlobalRecycleNetwork(dim, cfg) if cfg.grn and cfg.version == "v2" else None
        if self.grn is not None:
            init_xavier(self.grn)  # the reference initialises every Linear Xavier-normal
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # with teacher_init 'none' the teacher is the untrained student's copy from the start (asked for)
        self.register_buffer("has_teacher", torch.tensor(cfg.teacher_init == "none"))
        self.total_steps = 1
        self.assessment = TeacherAssessment()  # per-epoch teacher statistics (teacher_assessment.tsv)

    # --- set-up -------------------------------------------------------------------------------------
    def init_teacher(self, saved: dict) -> None:
        """Load the trained baseline (a run's model.pt) into the teacher; mismatches are errors."""
        if self.cfg.teacher_init == "none":
            raise ValueError("teacher_init is 'none' but a baseline checkpoint was given: drop one of the two")
        if saved.get("model") != self.cfg.baseline:
            raise ValueError(f"teacher checkpoint is a {saved.get('model')!r} model, MHIM wraps {self.cfg.baseline!r}")
        mine = dict(self.student.cfg.__dict__)
        theirs = {k: saved["model_config"].get(k) for k in mine}
        if theirs != mine:
            diff = {k: (theirs[k], mine[k]) for k in mine if theirs[k] != mine[k]}
            raise ValueError(f"teacher checkpoint config differs from the student's: {diff}")
        self.teacher.load_state_dict(saved["state_dict"])  # strict: every key must match
        if self.cfg.init_student == "fc":
            self.student.feature.load_state_dict(self.teacher.feature.state_dict())
        self.has_teacher.fill_(True)

    def set_schedule(self, total_steps: int) -> None:
        self.total_steps = max(1, total_steps)

    # --- masking ------------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_scores(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(instance scores [N], teacher bag embedding) for one bag x [1, N, D]. With v1 scores of a model that
        attends per head (TransMIL) and ``head_fusion: vote``, the per-head scores [H, N] are kept in
        ``self._head_scores`` for :meth:`select`."""
        t = self.student if self.cfg.teacher_update == "student" else self.teacher
        training = t.training
        t.train(self.cfg.teacher_dropout)
        h = t.embed(x)
        out = t.head(h)
        self._teacher_attention = None if out.attention is None else out.attention[0]
        kind = {"auto": self.cfg.version, "attention": "v1", "probability": "v2"}[self.cfg.score]
        score = t.instance_scores(h, out, kind)
        heads = out.extras.get("cls_attention") if kind == "v1" and self.cfg.head_fusion == "vote" else None
        self._head_scores = None if heads is None else heads[0]
        t.train(training)
        return score, out.embedding[0]

    def high_ratio(self) -> float:
        h = self.cfg.mask_high
        return cosine(h, 0.0, int(self.step), self.total_steps) if self.cfg.mask_high_cosine else h

    def high_mask(self, score: Tensor, heads: Tensor | None = None) -> Tensor:
        """Indices the high-score mask takes out of one bag at the current step (``mask_high`` after its schedule,
        RHSM when ``mask_high_random < 1``); none at ratio 0. :meth:`select` masks with it, and so do the
        instance diagnostics (:mod:`hardmil.train.diagnostics`), so the two cannot disagree."""
        h = self.high_ratio()
        if h <= 0:
            return torch.zeros(0, dtype=torch.long, device=score.device)
        return mask_candidates(score, heads, h, largest=True, random_fraction=self.cfg.mask_high_random)

    def select(self, score: Tensor, heads: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(kept indices, indices for the GRN) of one bag. ``heads`` [H, N]: per-head v1 scores, fused by vote.
        The masking rules run in the reference's order (v1 random, v1 low, high: the order of the random draws);
        each rule's count is ceil(N ratio) of the whole bag, the masked sets are united."""
        n = score.numel()
        masked = torch.zeros(n, dtype=torch.bool, device=score.device)
        if self.cfg.mask_random > 0:
            # the reference draws the random subset from every instance ordered by ascending score
            cand = top_instances(score, heads, n, largest=False)
            masked[cand[torch.randperm(n, device=score.device)[: math.ceil(n * self.cfg.mask_random)]]] = True
        if self.cfg.mask_low > 0:
            masked[mask_candidates(score, heads, self.cfg.mask_low, largest=False)] = True
        masked[self.high_mask(score, heads)] = True
        if masked.all():  # never mask a whole bag (declared deviation: the reference would train on no instance)
            masked[score.argmin()] = False
        remaining = (~masked).nonzero().squeeze(1)
        recycled = remaining[:0]
        if self.cfg.version == "v2" and self.cfg.rsm_ratio > 0 and len(remaining) > 1:
            n_rec = rsm_count(len(remaining), self.cfg.rsm_ratio, self.cfg.rsm_mode)
            if self.cfg.rsm_mode == "low":
                pick = score[remaining].topk(n_rec, largest=False).indices
                keep = torch.ones(len(remaining), dtype=torch.bool, device=score.device)
                keep[pick] = False
                keep = keep.nonzero().squeeze(1)
            else:  # the reference's draw: argsort of uniform noise, the first L - n_rec kept in the drawn order
                order = torch.rand(len(remaining), device=score.device).argsort()
                keep, pick = order[: len(remaining) - n_rec], order[len(remaining) - n_rec:]
                if self.cfg.keep_order == "bag":
                    keep = keep.sort().values
            if self.grn is not None:  # without the GRN the randomly masked instances are simply dropped
                recycled = remaining[pick].sort().values
            remaining = remaining[keep]
        return remaining, recycled

    # --- forward ------------------------------------------------------------------------------------
    def forward(self, x: Tensor, mask: Tensor | None = None, label: Tensor | None = None,
                coords: Tensor | None = None) -> MILOutput:
        s = self.student
        if not (self.training and label is not None):  # inference: the student alone, every instance
            h = s.embed(x)
            if self.grn is not None and self.cfg.grn_at_inference:
                h = torch.stack([torch.cat([h[b], self.grn(h[b])]) for b in range(len(h))])
                mask = None if mask is None else F.pad(mask, (0, self.cfg.grn_tokens), value=True)
            out = s.head(h, mask)
            out.attention = None if out.attention is None else out.attention[:, : x.shape[1]]
            out.instance_logits = None
            return out
        if not bool(self.has_teacher):
            raise ValueError("MHIM has no teacher: init_teacher() with the same fold's trained baseline first")
        if len(x) != 1 or mask is not None:
            raise ValueError("MHIM trains one bag at a time (batch size 1, no padding), as the reference")
        score, z_teacher = self.teacher_scores(x)
        if self.assessment is not None:
            self.assessment.add(score, self._teacher_attention, int(label[0]))
        kept, recycled = self.select(score, self._head_scores)
        # the student embeds the bag once (embed is per instance) and takes the kept and recycled rows: no copy
        # of x is gathered and kept for the backward; the high-score-masked rows get no gradient
        if self.cfg.grn_embed_grad:
            tokens, rec = s.embed(x)[0][torch.cat([kept, recycled])].split([len(kept), len(recycled)])
        else:  # option: no gradient from the GRN into the student's instance projection (cheaper)
            tokens = s.embed(x[:, kept])[0]
            with torch.no_grad():
                rec = s.embed(x[:, recycled])[0]
        if len(recycled):
            summary = self.grn(rec)
            tokens = torch.cat([tokens, summary])
            with torch.no_grad():  # the queries follow the GRN outputs by EMA, never by gradient; through .data, as
                m = self.cfg.grn_momentum  # the reference, so a backward through the stale queries is allowed
                self.grn.queries.data.mul_(m).add_((1 - m) * summary.detach())
        out = s.head(tokens[None], label=label)
        if self.cfg.alpha > 0:
            cons = consistency_loss(out.embedding[0], z_teacher, s.embedding_groups,
                                    self.cfg.temp_teacher, self.cfg.temp_student)
            out.aux_losses["consistency"] = self.cfg.alpha * cons
        attn = out.attention if out.attention is not None else torch.zeros(1, len(tokens), device=x.device)
        out.attention = torch.zeros_like(score)[None].scatter(1, kept[None], attn[:, : len(kept)].to(score.dtype))
        out.instance_logits = None
        return out

    @torch.no_grad()
    def after_step(self) -> None:
        """Teacher EMA update, once per bag after the optimiser step."""
        m = self.cfg.momentum
        if self.cfg.momentum_cosine:
            m = cosine(m, 1.0, int(self.step), self.total_steps)
        if self.cfg.teacher_update == "ema":
            for pt, ps in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
                pt.mul_(m).add_((1 - m) * ps.detach())
        self.step += 1
