"""Feature extraction for the request classifier, mirrored exactly by the Rust
crate `sy-classifier` (crates/classifier/src/features.rs). Change one, change both;
the Rust tests `reproduces_the_training_scripts_predictions`,
`keyword_features_match_the_script` and `extra_features_match_the_script` catch a
drift.

A prompt becomes three blocks:
  * hashed word unigrams (bigrams when BIGRAMS) of a bounded window (the first
    and last WINDOW tokens), signed FNV-1a hashing into HASH_DIM buckets,
    L2-normalised;
  * the mean static embedding of the window's WordPiece tokens (a lookup in the
    table made by make_embeddings.py), L2-normalised;
  * a few structural features of the whole text (length, lines, code and maths
    signals, question marks, non-ASCII share, turns, tools), intent-word group
    counts and the share of code words (keywords()), and shape features
    (extra(): sentences, options, lists, numbers, stop words, the first word,
    type/token and punctuation shares).
"""

import math

HASH_DIM = 1 << 14
# Word bigrams as well as unigrams (the Rust side reads the same flag from the artifact).
BIGRAMS = False
WINDOW = 128
# Structural features read at most this many chars from each end of the text.
DENSE_CHARS = 1024
MAX_WORD_CHARS = 100
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK = (1 << 64) - 1
DENSE_NAMES = [
    "log_chars", "log_words", "log_lines", "code_fence", "code_chars", "math_chars",
    "latex", "digits", "question", "non_ascii", "upper", "log_turns", "tools",
]
KEYWORDS = [
    ("kw_question", "what who when where which whom whose how"),
    # Programming vocabulary: languages, tools and libraries, and the words people
    # use about code. Short Stack Overflow-style questions ("how do I merge two
    # dicts") carry little else, so the group's share of the window counts too.
    ("kw_code", "code coding program programming function functions variable variables script syntax snippet compile compiler runtime "
                "debug bug bugs error exception exceptions implement implementation algorithm recursion recursive "
                "python java javascript typescript ruby php perl bash shell powershell sql mysql postgres postgresql sqlite "
                "html css json xml yaml csv regex regexp kotlin swift scala haskell matlab golang rust cpp csharp vba "
                "numpy pandas dataframe matplotlib django flask react nodejs node npm pip git github docker kubernetes "
                "linux unix tensorflow pytorch sklearn jquery angular vue spring excel "
                "api endpoint http url request server client framework library libraries module modules package import "
                "database query queries column columns index file files directory folder path command terminal console "
                "class classes object objects method methods array arrays list dict dictionary dictionaries tuple tuples "
                "string strings substring char character characters int float boolean bool byte bytes unicode encode decode "
                "loop loops iterate iteration lambda def return print const var null async await thread threads stack queue "
                "pointer pointers struct sort sorted append element elements input output repository"),
    ("kw_image", "image picture photo photograph draw drawing painting illustration render sketch logo poster style generate imagine depict scene"),
    ("kw_math", "solve calculate compute find equation integer number sum probability value many much total"),
    ("kw_proof", "prove show theorem derive premises conclusion therefore follows true false uncertain hence lemma"),
    ("kw_writing", "write essay story poem rewrite summarize summarise explain describe act role pretend letter email blog"),
    ("kw_constraint", "must should exactly least most words sentences paragraphs bullet format include avoid without only"),
    ("kw_chat", "you your i me my hi hello hey thanks love like feel are"),
]
KEYWORD_SETS = [set(words.split()) for _, words in KEYWORDS]
# No word is in two groups (the Rust side maps a word to one group).
assert sum(len(k) for k in KEYWORD_SETS) == len(set().union(*KEYWORD_SETS))
DENSE_NAMES = DENSE_NAMES + [name for name, _ in KEYWORDS] + ["log_numbers", "code_share"]
# Extra structural features (extra()): sentence ends, word length, multiple-choice
# options, trailing '?', list items, distinct numbers, stop-word share, imperative or
# question-word start, type/token ratio, punctuation share, longest number, number share.
EXTRA_NAMES = [
    "log_sentences", "log_word_len", "log_mc_options", "ends_question", "log_list_items",
    "log_distinct_numbers", "stop_ratio", "imperative_start", "question_start", "type_token_ratio",
    "punct_ratio", "log_max_number_len", "number_ratio",
]
DENSE_NAMES = DENSE_NAMES + EXTRA_NAMES
STOPWORDS = set("a an the of to in on at for from by with about as into and or but if then so than that this these those it its is are was were be been being do does did have has had i you he she we they me him her us them my your his our their what which who whom whose when where why how not no can could would should will shall may might must there here all any some each".split())
IMPERATIVES = set("write create generate make give list explain describe summarize summarise draw design implement build translate rewrite compose tell provide find calculate compute solve show prove suggest help act imagine pretend convert fix develop plan outline analyze analyse compare evaluate identify classify name define".split())
QUESTION_STARTS = set("what who when where which whom whose how why is are was were do does did can could would should will shall may".split())
CODE_CHARS = set("{}[]();=<>_#/\\|`")
MATH_CHARS = set("$^+-*/=<>")


def fnv1a(data: bytes) -> int:
    h = FNV_OFFSET
    for b in data:
        h ^= b
        h = (h * FNV_PRIME) & MASK
    return h


def is_ws(c: str) -> bool:
    return c in " \t\n\r\x0b\x0c" or (ord(c) > 127 and c.isspace())


def is_punct(c: str) -> bool:
    o = ord(c)
    if o < 128:
        return 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126
    return not c.isalnum()


def is_cjk(c: str) -> bool:
    o = ord(c)
    return (0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2A6DF
            or 0x2A700 <= o <= 0x2CEAF or 0xF900 <= o <= 0xFAFF or 0x2F800 <= o <= 0x2FA1F)


def basic_tokens(text: str) -> list:
    """Lower-cased BERT-style tokens: words, and each punctuation or CJK char alone."""
    out, cur = [], []
    for c in text.lower():
        o = ord(c)
        if (o < 32 and not is_ws(c)) or o == 127 or o == 0xFFFD:
            continue
        if is_ws(c):
            if cur:
                out.append("".join(cur))
                cur = []
        elif is_punct(c) or is_cjk(c):
            if cur:
                out.append("".join(cur))
                cur = []
            out.append(c)
        else:
            cur.append(c)
    if cur:
        out.append("".join(cur))
    return out


def window(tokens: list) -> list:
    if len(tokens) <= 2 * WINDOW:
        return tokens
    return tokens[:WINDOW] + tokens[-WINDOW:]


def norm_word(t: str) -> str:
    return "0" if t.isascii() and t.isdigit() else t


def hashed(tokens: list) -> dict:
    """bucket -> value, L2-normalised."""
    acc = {}
    prev = None
    for t in tokens:
        t = norm_word(t)
        for key in (("w:" + t), None if prev is None or not BIGRAMS else ("b:" + prev + " " + t)):
            if key is None:
                continue
            h = fnv1a(key.encode("utf-8"))
            b = h % HASH_DIM
            acc[b] = acc.get(b, 0.0) + (1.0 if (h >> 63) == 0 else -1.0)
        prev = t
    norm = math.sqrt(sum(v * v for v in acc.values()))
    if norm == 0:
        return {}
    return {b: v / norm for b, v in acc.items() if v != 0}


def wordpiece(tokens: list, vocab: dict) -> list:
    ids = []
    unk = vocab["[UNK]"]
    for t in tokens:
        chars = list(t)
        if len(chars) > MAX_WORD_CHARS:
            ids.append(unk)
            continue
        pieces, start, bad = [], 0, False
        while start < len(chars):
            end, found = len(chars), None
            while start < end:
                sub = "".join(chars[start:end])
                if start > 0:
                    sub = "##" + sub
                if sub in vocab:
                    found = vocab[sub]
                    break
                end -= 1
            if found is None:
                bad = True
                break
            pieces.append(found)
            start = end
        ids.extend([unk] if bad else pieces)
    return ids


def embedding(tokens: list, vocab: dict, table) -> list:
    """Mean of the window's token rows (dequantised), L2-normalised."""
    import numpy as np

    ids = wordpiece(tokens, vocab)
    dims = table.shape[1]
    if not ids:
        return [0.0] * dims
    v = table[np.array(ids)].astype(np.float64).sum(0) / len(ids)
    n = float(np.sqrt((v * v).sum()))
    return list(v / n) if n > 0 else [0.0] * dims


def dense(text: str, turns: int = 1, tools: bool = False) -> list:
    """Structural features: sizes of the whole text (UTF-8 bytes, newlines), the
    rest over its first and last DENSE_CHARS characters (all of a short text)."""
    if len(text) > 2 * DENSE_CHARS:
        regions = [text[:DENSE_CHARS], text[-DENSE_CHARS:]]
    else:
        regions = [text]
    chars = sum(len(r) for r in regions) or 1
    words = code = math_c = digits = non_ascii = upper = latex = 0
    fence = question = False
    for r in regions:
        inword = False
        for c in r:
            if is_ws(c):
                inword = False
            elif not inword:
                words, inword = words + 1, True
        code += sum(1 for c in r if c in CODE_CHARS)
        math_c += sum(1 for c in r if c in MATH_CHARS)
        digits += sum(1 for c in r if c.isascii() and c.isdigit())
        non_ascii += sum(1 for c in r if ord(c) > 127)
        upper += sum(1 for c in r if c.isascii() and c.isupper())
        latex += r.count("\\frac") + r.count("\\(") + r.count("\\[") + r.count("$$")
        fence = fence or "```" in r
        question = question or "?" in r
    return [
        math.log1p(len(text.encode("utf-8"))),
        math.log1p(words),
        math.log1p(text.count("\n") + 1),
        1.0 if fence else 0.0,
        code / chars,
        math_c / chars,
        math.log1p(latex),
        digits / chars,
        1.0 if question else 0.0,
        non_ascii / chars,
        upper / chars,
        math.log1p(turns),
        1.0 if tools else 0.0,
    ]


def extra(text: str, tokens: list) -> list:
    """More structural features. Character counts over the same regions as dense()
    (first and last DENSE_CHARS chars, or all of a short text); token counts over the
    window's basic tokens (the same list keywords() reads)."""
    if len(text) > 2 * DENSE_CHARS:
        regions = [text[:DENSE_CHARS], text[-DENSE_CHARS:]]
    else:
        regions = [text]
    sentences = non_ws = words = options = items = 0
    for r in regions:
        inword = False
        for k, c in enumerate(r):
            if is_ws(c):
                inword = False
            else:
                non_ws += 1
                if not inword:
                    words, inword = words + 1, True
            # a sentence end: . ! or ? followed by whitespace or the end of the region
            if c in ".!?" and (k + 1 == len(r) or is_ws(r[k + 1])):
                sentences += 1
        for line in r.split("\n"):
            s = line.lstrip(" \t")
            # a multiple-choice option line: "A. ", "A) ", "A: ", "(A) " ... with A-E upper case
            t = s[1:] if s.startswith("(") else s
            if len(t) >= 3 and t[0] in "ABCDE" and t[1] in ".):" and t[2] == " ":
                options += 1
            # a list item line: "- ", "* ", "• ", or one ASCII digit then "." or ")" then " "
            if s.startswith(("- ", "* ", "\u2022 ")) or (
                    len(s) >= 3 and s[0].isascii() and s[0].isdigit() and s[1] in ".)" and s[2] == " "):
                items += 1
    n = len(tokens) or 1
    numbers = [t for t in tokens if t.isascii() and t.isdigit()]
    puncts = sum(1 for t in tokens if len(t) == 1 and is_punct(t))
    first = next((t for t in tokens if not (len(t) == 1 and is_punct(t))), "")
    return [
        math.log1p(sentences),
        math.log1p(non_ws / max(words, 1)),
        math.log1p(options),
        1.0 if text.rstrip().endswith("?") else 0.0,
        math.log1p(items),
        math.log1p(len(set(numbers))),
        sum(1 for t in tokens if t in STOPWORDS) / n,
        1.0 if first in IMPERATIVES else 0.0,
        1.0 if first in QUESTION_STARTS else 0.0,
        len(set(tokens)) / n,
        puncts / n,
        math.log1p(max((len(t) for t in numbers), default=0)),
        len(numbers) / n,
    ]


def keywords(tokens: list) -> list:
    """log1p counts of each keyword group, and of number tokens, over the window;
    then the share of the window's tokens that are programming words."""
    counts = [0] * (len(KEYWORD_SETS) + 1)
    for t in tokens:
        for i, kw in enumerate(KEYWORD_SETS):
            if t in kw:
                counts[i] += 1
        if t.isascii() and t.isdigit():
            counts[-1] += 1
    return [math.log1p(c) for c in counts] + [counts[1] / (len(tokens) or 1)]
