"""`Engine`: what the CLI, the scanner and the server call to check inputs, whatever runs the model.

Implemented by the torch engines (`guard.check.engine.GuardSet`, and `Guard`, one policy) and the
ONNX engine (`guard.onnx.engine.OnnxGuard`). An input is prepared once (`prepare`: rendered,
escaped, limit-checked, tokenised; an InputError says why it cannot be checked) and the prepared
inputs are checked together (`check_prepared`), in forwards cut by a token budget
(guard.models.batching), giving one `CheckResult` per input, in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from guard.models.batching import TOKEN_BUDGET

if TYPE_CHECKING:
    from guard.check.engine import CheckResult
    from guard.check.prepared import Prepared
    from guard.method.artifact import Artifact


@runtime_checkable
class Engine(Protocol):
    """Compiled policies ready to check inputs (see the module docstring)."""

    @property
    def names(self) -> list[str]:
        """The policies' names, in the order each CheckResult lists them."""
        ...

    @property
    def artifacts(self) -> list[Artifact]:
        """The policies as far as verdicts need them (labels, heads, calibration)."""
        ...

    @property
    def warnings(self) -> list[str]:
        """What a caller should tell its user before checking (a dtype other than compiled in)."""
        ...

    @property
    def takes_images(self) -> bool: ...

    @property
    def model_reference(self) -> str: ...

    @property
    def fingerprint(self) -> str:
        """The model weights' fingerprint (what audit rows record)."""
        ...

    def text_tokens(self, text: str) -> int:
        """Tokens of a text alone, without the prompt or special tokens (the server's per-input limit)."""
        ...

    def token_spans(self, text: str, start: int = 0, end: int | None = None) -> Iterable[tuple[int, int]]:
        """The character spans of the tokens of `text[start:end]` alone, in `text`'s offsets,
        lazily (token windows, guard.models.offsets)."""
        ...

    def prepare(self, fields: dict) -> Prepared:
        """One input (prompt fields, with an optional "images" list) ready for `check_prepared`,
        or InputError (a GuardError) saying why this input cannot be checked."""
        ...

    def check_prepared(
        self,
        prepared: Sequence[Prepared],
        *,
        batch_size: int = 16,
        token_budget: int | None = TOKEN_BUDGET,
        explain: bool = False,
        progress: bool = False,
    ) -> list[CheckResult]:
        """One CheckResult per prepared input, in order; forwards of at most `batch_size` inputs
        and `token_budget` padded tokens (None: the count alone)."""
        ...

    def select(self, names: Sequence[str]) -> Engine:
        """An engine for some of these policies, sharing the model."""
        ...
