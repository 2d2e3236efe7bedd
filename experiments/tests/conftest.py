"""The experiments' tests share the core tests' helpers (a test module's `from conftest import`
may find either file, so both hold the same names)."""
from tests.conftest import PASTE_NAMESPACE, one_thread, paste_alone  # noqa: F401
