"""Free text (DICOM descriptions, folder names) to one of :data:`LOWER_LIMB_PARTS`.

Hospitals spell body parts many ways: ``BodyPartExamined`` holds defined terms such as
``LEG`` or ``EXTREMITY``, descriptions hold prose ("Non-ossifying fibroma of distal tibia"),
and exports name folders ``XR_KNEE`` or ``TibFib``. The table below is the one place that
maps those words onto the seven lower-limb parts limbscan is built for.
"""

from __future__ import annotations

import re

from limbscan.io.meta import LOWER_LIMB_PARTS

# (pattern, body part). Patterns match whole words of the normalised text (lower case,
# separators turned into spaces, camelCase split). Where a text names several parts the
# earliest mention wins ("knee and lower leg" -> knee), so the order here only breaks
# ties between patterns that start at the same word.
_KEYWORDS: tuple[tuple[str, str], ...] = (
    # Multi-word names first: "phalanx of the toe" must not fall through to nothing, and
    # "tibial plateau" is a knee study although it says tibia.
    (r"(phalanx|phalanges|phalangeal)( of( the)?)? (great )?(toe|toes|hallux)", "toe"),
    (r"tibial plateaus?", "knee"),
    (r"lower legs?", "leg"),
    (r"tib( and)? fib", "leg"),
    (r"tibia( and)? fibula", "leg"),
    (r"hip joints?", "hip"),
    # A femoral neck fracture is a hip study.
    (r"(femoral|femur) necks?|necks? of( the)? (femur|femora)|intertrochanteric|trochanters?", "hip"),
    (r"toes?|hallux|halluces", "toe"),
    (r"foot|feet|forefoot|midfoot|hindfoot|heels?|calcaneus|calcaneum|calcanei"
     r"|metatarsals?|metatarsus|tarsals?|tarsus|talus|navicular|cuboid|cuneiforms?", "foot"),
    (r"ankles?|malleolus|malleoli|malleolar|talocrural|mortise", "ankle"),
    (r"legs?|tibia|tibiae|tibias|tibial|fibula|fibulae|fibulas|fibular|shins?|crus"
     r"|tibfib|tib|fib", "leg"),
    (r"knees?|patella|patellae|patellar|patellas", "knee"),
    (r"femur|femora|femurs|femoral|thighs?", "femur"),
    (r"hips?|pelvis|pelvic|acetabulum|acetabular", "hip"),
)

_PATTERN = re.compile(
    "|".join(rf"(?P<k{i}>\b(?:{pattern})\b)" for i, (pattern, _) in enumerate(_KEYWORDS))
)
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_SEPARATORS = re.compile(r"[^a-z]+")

assert all(part in LOWER_LIMB_PARTS for _, part in _KEYWORDS)


def normalize_body_part(text: str | None) -> str | None:
    """Map free text to one of ``LOWER_LIMB_PARTS``, or ``None`` where it names none.

    >>> normalize_body_part("XR_KNEE"), normalize_body_part("TIB-FIB"), normalize_body_part("EXTREMITY")
    ('knee', 'leg', None)
    """
    if not text:
        return None
    words = _SEPARATORS.sub(" ", _CAMEL.sub(" ", str(text)).lower()).strip()
    match = _PATTERN.search(words)
    if match is None:
        return None
    return _KEYWORDS[int(match.lastgroup[1:])][1]
