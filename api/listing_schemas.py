"""Request models and limits of the listing write routes (``POST``/``PATCH``/``DELETE /listings``).

The schemas bound sizes and types only; what a field's value must be (a GBP price, a category path, a title
left after the site suffix is stripped) is ingest's cleaning rule, applied by `catalog.listing_writes`, whose
refusal is a 422 naming the field and the rule.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StringConstraints, model_validator

from api.schemas import ValidUnicode

MAX_TITLE_CHARS = 300
MAX_DESCRIPTION_CHARS = 10_000
MAX_CATEGORY_CHARS = 500
MAX_LOCATION_CHARS = 256
MAX_PRICE_CHARS = 32
# The Idempotency-Key header: visible ASCII, as the IETF draft's examples (UUIDs, random tokens).
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]{1,255}$"

PRICE_HELP = (
    "GBP, as the export writes it ('£1,250.00', '1250', 'Free') or, in JSON, a number (1250.5); at most two "
    "decimals, not negative"
)
TITLE_HELP = "Title (a trailing ' | in Town | Gumtree' site suffix is stripped, as ingest does); must not be empty"
CATEGORY_HELP = "Category path, levels separated by ' / ' ('Home & Garden / Furniture / Tables')"
LOCATION_HELP = "'Town, County', a town or a county (may be empty)"


def _text(max_length: int):
    return Annotated[str, StringConstraints(max_length=max_length), ValidUnicode]


class ListingUpdate(BaseModel):
    """The fields to change; a field left out (or null) keeps its value. At least one must be given."""

    model_config = ConfigDict(extra="forbid")

    title: _text(MAX_TITLE_CHARS) | None = Field(None, description=TITLE_HELP + ".")
    description: _text(MAX_DESCRIPTION_CHARS) | None = Field(None, description="Description (may be empty).")
    price: StrictInt | StrictFloat | _text(MAX_PRICE_CHARS) | None = Field(None, description=PRICE_HELP + ".")
    category: _text(MAX_CATEGORY_CHARS) | None = Field(None, description=CATEGORY_HELP + ".")
    location: _text(MAX_LOCATION_CHARS) | None = Field(None, description=LOCATION_HELP + ".")
    status: Literal["active", "sold"] | None = Field(
        None, description="`sold` takes the listing out of search at once (it stays readable by id); `active` again."
    )

    @model_validator(mode="after")
    def _something_to_change(self) -> ListingUpdate:
        if all(value is None for value in self.model_dump().values()):
            raise ValueError("nothing to change: give at least one of " + ", ".join(type(self).model_fields))
        return self

    def field_changes(self) -> dict[str, str]:
        """The changed fields as the raw text the cleaning rules read (a JSON number price becomes '12.5')."""
        fields = self.model_dump(exclude={"status"})
        return {name: str(value) for name, value in fields.items() if value is not None}
