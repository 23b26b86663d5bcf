"""Small helpers that keep error messages grammatical."""

from __future__ import annotations

# Vowel letters that are read with a consonant sound at the start of these words: "a uint8", "a one-hot".
_CONSONANT_SOUND = ("uint", "uni", "use", "usu", "one")


def with_article(noun: str) -> str:
    """``noun`` after "a" or "an", as it is read: ``with_article("int")`` is ``"an int"``.

    Example:
        >>> with_article("int"), with_article("float"), with_article("uint8")
        ('an int', 'a float', 'a uint8')
    """
    vowel = noun[:1].lower() in "aeiou" and not noun.lower().startswith(_CONSONANT_SOUND)
    return f"{'an' if vowel and noun else 'a'} {noun}"
