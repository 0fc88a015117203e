"""The config's money and energy amounts: finite, from 0 to MAX_AMOUNT (the report's arithmetic and JSON have no
infinity). Apart from schema.py so that every section's module can use them without importing it."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

MAX_AMOUNT = 1e15
Amount = Annotated[float, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False,
                                json_schema_extra={"expect": "a number from 0 to 1e15"})]
"""A price, cost, budget or power draw: finite (the report's arithmetic and JSON have no infinity)."""
