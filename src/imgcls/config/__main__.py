"""``python -m imgcls.config > docs/config.md``: the key reference, generated from the schema."""

from imgcls.config.reference import markdown

print(markdown(), end="")
