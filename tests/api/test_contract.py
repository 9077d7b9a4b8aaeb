"""The OpenAPI contract, checked by schemathesis against the app in-process (ASGI) on the demo pipeline.

Every operation gets positive and negative examples (the examples, coverage and fuzzing phases) and
every built-in check (no 5xx, status codes and bodies documented in the schema, content types,
negative data rejected, valid data accepted, unsupported methods, ...); a stateful run then follows
the schema's links (search -> listing -> photo). Seeded and bounded, so a run is reproducible and short:
a failure prints the request that reproduces it (`curl` line).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import negative_data_rejection

from api.config import Settings
from api.main import create_app
from api.schemas import has_visible_character

EXAMPLES_PER_OPERATION = 30
SEED = 20240611

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": SEED,
        "generation": {"max-examples": EXAMPLES_PER_OPERATION, "mode": "all"},
        "checks": {"enabled": True},
    }
)
HYPOTHESIS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


# The schema does not depend on the workspace, so it is read at import from an app that loads nothing
# (schemathesis.pytest.from_fixture, the lazy loader, does not run under pytest 9); requests go to the app
# on the demo pipeline, passed to each call.
schema = schemathesis.openapi.from_dict(create_app(Settings(workspace=Path("unused"))).openapi(), config=CONFIG)


def within_unstated_rules(body) -> bool:
    """Two rules JSON Schema cannot state (each a 422 that says how to fix it): ``min_price <= max_price``, and a
    query (or words with a photo) with at least one visible character. Bodies breaking them are left out
    rather than counted as valid data that was refused."""
    if not isinstance(body, dict):
        return True
    for name in ("query", "text"):
        words = body.get(name)
        if isinstance(words, str) and not has_visible_character(words):
            return False
    filters = body.get("filters") if isinstance(body.get("filters"), dict) else body
    low, high = filters.get("min_price"), filters.get("max_price")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
    return not numbers or low <= high


@st.composite
def _photos(draw, image_format: str) -> bytes:
    """Small real photos: random bytes would make every schema-valid upload a 415."""
    size = (draw(st.integers(8, 64)), draw(st.integers(8, 64)))
    color = tuple(draw(st.integers(0, 255)) for _ in range(3))
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=image_format)
    return buffer.getvalue()


schemathesis.openapi.media_type("image/jpeg", _photos("JPEG"))
schemathesis.openapi.media_type("image/png", _photos("PNG"))


@pytest.fixture(scope="module")
def demo_app(demo_state):
    return create_app(demo_state.settings, state=demo_state)


# The demo state has no recommenders: these routes answer their documented 503 (tests/api/test_recommendations.py
# and test_personal_search.py serve them with trained ones).
NEEDS_RECOMMENDERS = ("/users/{user_id}/recommendations", "/listings/{listing_id}/similar")


def _excluded_checks(case) -> list:
    # Multipart carries strings and repeated parts only: a "negative" `[]` is an absent field, `[x]` is `x` and
    # an object in a text field is a string, so they are valid on the wire (test_image_form.py covers the form).
    excluded = [negative_data_rejection] if case.media_type == "multipart/form-data" else []
    if case.path in NEEDS_RECOMMENDERS:
        excluded.append(not_a_server_error)
    return excluded


@schema.parametrize()
@HYPOTHESIS
def test_every_operation_keeps_its_contract(case, demo_app):
    if within_unstated_rules(case.body):  # every phase, the coverage phase's boundary values included
        case.call_and_validate(app=demo_app, excluded_checks=_excluded_checks(case))


def test_linked_operations_keep_their_contract(demo_app):
    """Search -> the hit's listing -> its photo, following the schema's OpenAPI links."""
    linked = schemathesis.openapi.from_asgi("/openapi.json", demo_app, config=CONFIG)

    class Workflow(linked.as_state_machine()):
        def validate_response(self, response, case, additional_checks=None, **kwargs):
            if within_unstated_rules(case.body):
                case.validate_response(
                    response,
                    additional_checks=additional_checks,
                    excluded_checks=_excluded_checks(case),
                    transport_kwargs=kwargs or None,
                    recorder=self.recorder,
                )

    Workflow.run(
        settings=settings(
            max_examples=EXAMPLES_PER_OPERATION,
            stateful_step_count=4,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )
