# A package, so this folder's conftest imports as `browser.conftest` and leaves the top-level `conftest` module
# (which test files import from: `from conftest import LiveServer`) in place.
