"""What a sample is (the canonical schema) and how each source dataset becomes one."""

from datasets_spec.errors import UserError
from datasets_spec.schema import CANONICAL_SCHEMA, SCHEMA_VERSION, validate_table

__all__ = ["CANONICAL_SCHEMA", "SCHEMA_VERSION", "UserError", "validate_table"]
