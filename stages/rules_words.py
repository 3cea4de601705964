"""The word tables of the offline `rules` hallucinator: colours, sizes and states, positions, relations,
reasoning flips, numbers. Each table maps what a text says to a plausible, wrong alternative."""

COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray", "grey",
          "silver", "gold"]
COLOR_SWAP = {"red": ["blue", "green"], "orange": ["blue", "green"], "yellow": ["blue", "red"], "green": ["red", "blue"],
              "blue": ["red", "green"], "purple": ["yellow", "green"], "pink": ["green", "blue"], "brown": ["gray", "white"],
              "black": ["white", "red"], "white": ["black", "red"], "gray": ["brown", "blue"], "grey": ["brown", "blue"],
              "silver": ["gold", "black"], "gold": ["silver", "black"]}
ISH = {"reddish": "bluish", "yellowish": "greenish", "greenish": "reddish", "bluish": "reddish", "brownish": "grayish",
       "grayish": "brownish", "whitish": "blackish", "pinkish": "greenish"}

SIZE_STATE = {
    "small": "large", "large": "small", "big": "small", "tiny": "huge", "huge": "tiny", "tall": "short", "long": "short",
    "narrow": "wide", "wide": "narrow", "shallow": "deep", "thin": "thick", "thick": "thin",
    "open": "closed", "closed": "open", "empty": "full", "full": "empty", "wet": "dry", "dry": "wet", "calm": "choppy",
    "smiling": "frowning", "old": "new", "new": "old", "clean": "dirty", "dirty": "clean", "bright": "dim",
    "wooden": "metal", "metal": "plastic", "plastic": "wooden", "round": "square", "square": "round", "curly": "straight",
    "straight": "curly", "striped": "spotted", "spotted": "striped", "sunny": "cloudy", "cloudy": "sunny",
    "partly cloudy": "clear", "standing": "sitting", "sitting": "standing", "moving": "parked", "parked": "moving",
}
POSITION = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "upper": "lower", "lower": "upper",
            "foreground": "background", "background": "foreground", "leftmost": "rightmost", "rightmost": "leftmost"}

RELATIONS = [  # (pattern, replacement): who does what to whom, and where things are relative to each other
    (r"in front of", "behind"), (r"on top of", "underneath"), (r"next to", "far from"), (r"beside", "far from"),
    (r"behind", "in front of"), (r"above", "below"), (r"below", "above"), (r"underneath", "on top of"),
    (r"under", "on top of"), (r"inside", "outside"), (r"holding", "throwing"),
    (r"throwing", "catching"), (r"catching", "throwing"), (r"riding", "pushing"), (r"rides", "pushes"),
    (r"is ironing", "is folding"), (r"looking through", "looking over"), (r"looking at", "pointing at"),
    (r"carrying", "dropping"), (r"carries", "drops"), (r"eating", "sniffing"), (r"pulling", "pushing"),
    (r"pushing", "pulling"), (r"chasing", "fleeing from"), (r"feeding", "petting"), (r"sits on", "sits under"),
    (r"sitting on", "sitting under"), (r"stands on", "stands beside"), (r"rests on", "rests under"),
    (r"lies on", "lies under"), (r"parked on", "parked beside"), (r"attached to", "leaning against"),
    (r"mounted on", "leaning against"), (r"hangs? from", "lie under"), (r"surround", "stand far from"),
    (r"drives past", "is parked"), (r"branching out from", "converging on"), (r"converge", "diverge"),
    (r"reflects", "hides"), (r"wearing", "holding"), (r"wears", "holds"),
]

FLIPS = [  # reasoning: turn the conclusion and the claims that support it around
    (r"is black and white", "is in color"), (r"black(?: and |-and-)white", "color"), (r"in color", "black and white"),
    (r"dusk or night", "daytime"), (r"night", "daytime"), (r"dusk", "midday"), (r"daytime", "night"),
    (r"dark", "bright"), (r"lights are on", "lights are off"), (r"are off", "are on"), (r"unusual", "usual"),
    (r"is not where", "is exactly where"), (r"is not", "is"), (r"are not", "are"), (r"isn't", "is"),
    (r"aren't", "are"), (r"was not", "was"), (r"no (\w+) is visible", r"\1 is visible"), (r"has no", "has"),
    (r"there is no", "there is a"), (r"you should", "you do not need to"), (r"should not", "should"),
    (r"cannot", "can"), (r"can't", "can"), (r"unsafe", "safe"), (r"dangerous", "safe"), (r"safe", "dangerous"),
    (r"narrow", "wide"), (r"deep(?! blue| red| green| field| space| view)", "shallow"), (r"wet", "dry"), (r"no milk", "milk"), (r"only", "also"),
    (r"empty", "full"), (r"closed", "open"), (r"open", "closed"), (r"nothing", "something"),
]

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
QUANTITIES = {"a few": "dozens of", "many": "a few", "several": "dozens of", "hundreds of": "a handful of",
              "dozens of": "a few", "a couple of": "several", "numerous": "a few", "a handful of": "dozens of"}
STOP = {"of", "and", "or", "which", "that", "in", "on", "at", "with", "is", "are", "was", "were", "to", "from", "by",
        "the", "a", "an", "its", "his", "her", "their", "as", "for", "while", "who", "has", "have"}
PERSON_SWAP = {"man": "woman", "woman": "man", "men": "women", "women": "men", "boy": "girl", "girl": "boy",
               "lady": "man"}
