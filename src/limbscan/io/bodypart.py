"""Free text (DICOM descriptions, folder names) to a body part: one of :data:`LOWER_LIMB_PARTS`,
or one of :data:`OTHER_REGIONS` that limbscan was not built for.

Hospitals spell body parts many ways: ``BodyPartExamined`` holds defined terms such as
``LEG`` or ``EXTREMITY``, descriptions hold prose ("Non-ossifying fibroma of distal tibia"),
and exports name folders ``XR_KNEE`` or ``TibFib``. The two tables below are the one place
that maps those words onto body parts; the input gate (:mod:`limbscan.gate`) reads them.
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
    # So is its head; "head" and "neck" alone name other regions (the second table).
    (r"(femoral|femur) (necks?|heads?)|(necks?|heads?) of( the)? (femur|femora)|intertrochanteric|trochanters?", "hip"),
    (r"(necks?|heads?) of( the)? (fibula|tibia)", "leg"),
    (r"(necks?|heads?) of( the)? (talus|metatarsals?)", "foot"),
    (r"toes?|hallux|halluces", "toe"),
    (r"foot|feet|forefoot|midfoot|hindfoot|heels?|calcaneus|calcaneum|calcanei"
     r"|metatarsals?|metatarsus|tarsals?|tarsus|talus|talar|navicular|cuboid|cuneiforms?", "foot"),
    (r"ankles?|malleolus|malleoli|malleolar|talocrural|mortise", "ankle"),
    (r"legs?|tibia|tibiae|tibias|tibial|fibula|fibulae|fibulas|fibular|shins?|crus"
     r"|tibfib|tib|fib", "leg"),
    (r"knees?|patella|patellae|patellar|patellas", "knee"),
    (r"femur|femora|femurs|femoral|thighs?", "femur"),
    (r"hips?|pelvis|pelvic|acetabulum|acetabular", "hip"),
)

_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_SEPARATORS = re.compile(r"[^a-z]+")

# Parts of the body that are not the lower limb, as the input gate names them in its reasons.
# Checked after the lower-limb table, so "femoral neck" stays a hip and "neck" alone is not.
_OTHER_KEYWORDS: tuple[tuple[str, str], ...] = (
    (r"chest|thorax|thoracic cage|lungs?|ribs?|sternum|cxr|pa chest|heart|cardiac|mediastinum", "chest"),
    (r"abdomen|abdominal|abdo|kub|bowel|kidneys?|renal|urinary|bladder|gastric|stomach", "abdomen"),
    (r"skull|head|brain|face|facial|orbits?|sinus|sinuses|nasal|mandible|mandibular|jaw|tmj"
     r"|dental|teeth|tooth|panoramic|opg|cranium|cranial|mastoids?", "head"),
    (r"c spine|t spine|l spine|cspine|tspine|lspine|spine|spinal|vertebrae?|vertebral|cervical|thoracic"
     r"|lumbar|lumbosacral|sacrum|sacral|coccyx|scoliosis|whole spine", "spine"),
    (r"neck|soft tissue neck|larynx|thyroid", "neck"),
    (r"breast|breasts|mammo|mammography|mammogram", "breast"),
    (r"shoulders?|clavicles?|scapulae?|scapulas|acromioclavicular|glenohumeral|humerus|humeri|humeral"
     r"|upper arm|arm|arms", "shoulder / arm"),
    (r"elbows?|olecranon|forearms?|radius|radii|ulna|ulnae|ulnar|radial", "elbow / forearm"),
    (r"wrists?|carpals?|carpus|scaphoid|hands?|fingers?|thumbs?|metacarpals?|phalanx of( the)? (finger|thumb)"
     r"|upper (limb|extremity)|upper extremities", "hand / wrist"),
    (r"whole body|wholebody|total body", "whole body"),
)
OTHER_REGIONS = tuple(dict.fromkeys(part for _, part in _OTHER_KEYWORDS))

assert all(part in LOWER_LIMB_PARTS for _, part in _KEYWORDS)

_ALL_KEYWORDS = _KEYWORDS + _OTHER_KEYWORDS
_PATTERN = re.compile(
    "|".join(rf"(?P<k{i}>\b(?:{pattern})\b)" for i, (pattern, _) in enumerate(_ALL_KEYWORDS))
)


def body_region(text: str | None) -> tuple[str, str] | None:
    """``(part, word)`` for the first body part that free text names, lower limb or not: ``part``
    is one of ``LOWER_LIMB_PARTS`` or ``OTHER_REGIONS``, ``word`` the normalised words that named it.
    ``None`` where it names none ("EXTREMITY", a blank, a patient's name).

    >>> body_region("XR_KNEE"), body_region("PA CHEST"), body_region("EXTREMITY")
    (('knee', 'knee'), ('chest', 'pa chest'), None)
    """
    if not text:
        return None
    words = _SEPARATORS.sub(" ", _CAMEL.sub(" ", str(text)).lower()).strip()
    match = _PATTERN.search(words)
    if match is None:
        return None
    return _ALL_KEYWORDS[int(match.lastgroup[1:])][1], match.group(0)


def normalize_body_part(text: str | None) -> str | None:
    """Map free text to one of ``LOWER_LIMB_PARTS``, or ``None`` where it names none (or names
    another part first).

    >>> normalize_body_part("XR_KNEE"), normalize_body_part("TIB-FIB"), normalize_body_part("EXTREMITY")
    ('knee', 'leg', None)
    """
    found = body_region(text)
    return found[0] if found is not None and found[0] in LOWER_LIMB_PARTS else None
