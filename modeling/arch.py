"""MODEL.ARCH strings of NAMA (seed 002): which path carries the uncertainty head and what else is switched on.

Grammar: a base name, then '-'-separated tokens.
- base: 'baseline' (no head), 'uc' (head on the metric path: the norm of the pooled feature the metric loss
  sees), 'clsbaseline' (classification loss alone, no head), 'clsuc' (classification loss alone, head on
  the post-BNNeck feature the classification loss sees);
- tokens: 'bn' (a BatchNorm1d on the pooled feature, before its norm is taken; the metric loss then sees the
  normalised-by-BN feature), 'no' (nothing: NAMA's placeholder), 'arc' / 'cos' (the margin form of the
  uc-cls loss on clsuc; default: the angular form pi/2 - theta).
NAMA fell back silently to a plain baseline on an unknown string, which then failed inside the loss; here
anything else is a ConfigError listing the valid forms.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.errors import ConfigError

BASES = ("baseline", "uc", "clsbaseline", "clsuc")
TOKENS = ("bn", "no", "arc", "cos")
EXAMPLES = ("baseline", "uc", "uc-bn-no", "clsbaseline", "clsuc", "clsuc-arc", "clsuc-cos")


@dataclass(frozen=True)
class Arch:
    """The parsed MODEL.ARCH."""

    name: str
    classification_only: bool  # 'cls*': the classification loss trains alone
    uncertainty: bool  # an uncertainty head exists
    pre_bn: bool  # a BatchNorm1d on the pooled feature
    margin_form: str  # uc-cls margin form: 'angle', 'arc' or 'cos'

    @property
    def head_input(self) -> str:
        """The model output whose norm the head reads: 'neck_feat' on the classification path, else 'feat'."""
        return "neck_feat" if self.classification_only else "feat"


def parse_arch(text: str) -> Arch:
    """MODEL.ARCH -> Arch, or a ConfigError naming the valid forms."""
    base, *tokens = str(text).strip().split("-")
    bad = [t for t in tokens if t not in TOKENS]
    form_tokens = [t for t in tokens if t in ("arc", "cos")]
    problem = None
    if base not in BASES:
        problem = f"unknown base {base!r}"
    elif bad:
        problem = f"unknown token(s) {', '.join(map(repr, bad))}"
    elif len(form_tokens) > 1:
        problem = "more than one margin form"
    elif form_tokens and base != "clsuc":
        problem = f"margin form {form_tokens[0]!r} needs the base 'clsuc'"
    if problem:
        raise ConfigError(
            f"MODEL.ARCH = {text!r}: {problem}; expected one of {', '.join(BASES)} optionally followed by "
            f"'-'-joined tokens {', '.join(TOKENS)}, e.g. {', '.join(EXAMPLES)}"
        )
    return Arch(
        name=str(text),
        classification_only=base.startswith("cls"),
        uncertainty=base.endswith("uc"),
        pre_bn="bn" in tokens,
        margin_form=form_tokens[0] if form_tokens else "angle",
    )
