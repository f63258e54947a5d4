"""The rules of the Stanford PTBTokenizer 3.4.1 lexer, as Python regular expressions.

The JFlex specification behind ``stanford-corenlp-3.4.1.jar`` is a list of macros and rules; these
are their equivalents, established by probing the jar. Differences from Python's regex syntax that
matter: JFlex ``%caseless`` makes literal text case-insensitive but leaves character classes exact
(see :func:`_ci`), and a rule ``r1/r2`` matches ``r2`` as trailing context that counts for the
longest-match comparison without being consumed (``context`` below).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from mmgen.evaluation.ptb import tables as _tables

# --------------------------------------------------------------------------------------------------
# Character classes (contents of [...], without the brackets)


def _class(spec: str) -> str:
    parts = []
    for item in spec.split():
        first, _, last = item.partition("-")
        parts.append(f"\\u{first}-\\u{last}" if last else f"\\u{first}")
    return "".join(parts)


_L = _class(_tables.LETTER)  # [:letter:]
_D = _class(_tables.DIGIT)  # [:digit:]
_X = _class(_tables.LETTER_EXTRA) + "\\u00ad"  # further word characters (marks, soft hyphen)
_SYMBOL = _class(_tables.SYMBOL)


def _upper_class() -> str:
    """[:uppercase:]: upper-case letters of the lexer plus Roman numerals and circled capitals."""
    letters = re.compile(f"[{_L}]")
    codes = [
        c
        for c in range(0x10000)
        if unicodedata.category(chr(c)) == "Lu" and letters.match(chr(c)) and not 0x13A0 <= c <= 0x13F4
    ]
    ranges: list[list[int]] = []
    for c in codes:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    spec = " ".join(f"{a:04x}-{b:04x}" for a, b in ranges) + " 2160-216f 24b6-24cf"
    return _class(spec)


_UPPER = _upper_class()


def _ci(literal: str) -> str:
    """A literal matched case-insensitively, as JFlex ``%caseless`` does (character classes stay exact)."""
    out = []
    for ch in literal:
        if "a" <= ch.lower() <= "z":
            out.append(f"[{ch.lower()}{ch.upper()}]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def _alt(*words: str) -> str:
    return "(?:" + "|".join(_ci(w) for w in sorted(words, key=len, reverse=True)) + ")"


# --------------------------------------------------------------------------------------------------
# Macros of the lexer specification

SPACE = "[ \\t\\u00a0\\u2000-\\u200a\\u3000]"
NEWLINE = "(?:\\r\\n|[\\r\\n\\u2028\\u2029\\x0b\\x0c\\x85])"
SPACENL = f"(?:{SPACE}|{NEWLINE})"
_NAME = "[A-Za-z][A-Za-z0-9_:.-]*"
# Open tags with names, flags or quoted attribute values; closing tags; <!...> and <?...>.
SGML = f"<(?:[!?][A-Za-z-][^>\\r\\n]*|{_NAME}(?: +(?:{_NAME} *= *(?:'[^']*'|\"[^\"]*\")|{_NAME}))* */?|/{_NAME}) *>"
SENTEND = f"{SPACENL}(?:{SPACENL}|[{_UPPER}]|{SGML})"
SPLET = "&[aeiouAEIOU]" + _alt("acute", "grave", "uml") + ";"
LETTER = f"(?:[{_L}{_X}]|{SPLET})"
LETTER_DIGIT = f"(?:[{_L}{_X}{_D}]|{SPLET})"
WORD = f"{LETTER}{LETTER_DIGIT}*(?:[.!?]{LETTER}{LETTER_DIGIT}*)*"
LD = f"[{_L}{_D}]"
APOS = "(?:['\\u0092\\u2019]|" + _ci("&apos;") + ")"
APOSETC = f"(?:{APOS}|[`\\u0091\\u2018\\u201b])"
REDAUX = f"{APOS}(?:[msdMSD]|{_alt('re', 've', 'll')})"
SWORD = "[A-Za-z\\u00ad]*[A-MO-Za-mo-z]\\u00ad*"
SREDAUX = f"[nN]{APOSETC}[tT]"
NUM = f"[{_D}]*(?:[.:,\\u00ad\\u066b\\u066c][{_D}]+)+|[{_D}]+"
NUMBER = f"[-+]?(?:{NUM})"
HYPHEN = "[-_\\u058a\\u2010\\u2011]"
ACRO = (
    "(?:" + _ci("U.S.-") + "(?:" + _ci("U.S.S.R") + "|" + _ci("U.K") + ")"
    "|" + _alt("Canada", "Sino", "Korean", "EU", "Japan", "non") + _ci("-U.S") + "|[A-Za-z](?:\\.[A-Za-z])*)"
)
ACRO2 = "(?:[A-Za-z](?:\\.[A-Za-z])+)"
THING_PART = f"(?:[dDoOlL]{APOSETC}{LD})?{LD}+"

ABBREV1 = (
    "(?:"
    + "|".join(
        [
            _alt("Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec"),
            _alt("Mon", "Tue", "Tues", "Wed", "Thu", "Thurs", "Fri"),
            # Some state names are case-sensitive in their first letter: they are also common words.
            "A" + _ci("z"),
            "A" + _ci("rk"),
            "D" + _ci("el"),
            "I" + _ci("ll"),
            "L" + _ci("a"),
            "M" + _ci("ass"),
            "M" + _ci("iss"),
            "O" + _ci("re"),
            "P" + _ci("a"),
            "T" + _ci("ex"),
            "W" + _ci("ash"),
            _alt("Ala", "Ariz", "Calif", "Colo", "Conn", "Ct", "Dak", "Fla", "Ga", "Ind", "Kan", "Kans", "Ky"),
            _alt("Md", "Mich", "Minn", "Mo", "Mont", "Neb", "Nev", "Okla", "Penn", "Tenn", "Va", "Vt"),
            _alt("Wis", "Wisc", "Wyo"),
            _alt("Inc", "Co", "Cos", "Corp", "Ltd", "Plc", "Rt", "Bancorp", "Bhd", "Assn", "Univ", "Intl", "Sys"),
            _ci("P") + "(?:" + _ci("p") + ")?" + _ci("t") + "[ye]" + "(?:" + _ci("s") + ")?",
            _alt("tel", "est", "ext", "sq", "Jr", "Sr", "Bros", "Ed.D", "Ph.D", "Blvd", "Rd", "Esq"),
            _alt("etc", "al", "seq", "Bldg"),
        ]
    )
    + ")\\."
)
ABBREV4 = (
    "(?:"
    + "|".join(
        [
            _alt("Mr", "Mrs", "Ms", "Dr", "Drs", "Prof", "Profs", "Sen", "Sens", "Rep", "Reps", "Atty", "Attys"),
            _alt("Lt", "Col", "Gen", "Messrs", "Gov", "Govs", "Adm", "Rev", "Maj", "Sgt", "Cpl", "Pvt", "Capt"),
            _alt("St", "Ste", "Ave", "Pres", "Lieut", "Hon", "Brig", "Cmdr", "Comdr", "Pfc", "Spc", "Supt"),
            _alt("Supts", "Det", "Mt", "Ft", "Adj", "Adv", "Asst", "Assoc", "Ens", "Insp", "Mlle", "Mme", "Msgr"),
            _alt("Sfc", "vs", "Alex", "Wm", "Jos", "Cie", "a.k.a", "cf", "TREAS", "Ph"),
            _alt("Invt", "Elec", "Natl", "Mfg", "Mtg", "Dept"),
            "M" + _ci("iss"),
            "v",
            ACRO,
        ]
    )
    + ")"
)
ABBREV3 = _alt("ca", "fig", "figs", "prop", "no", "nos", "art", "bldg", "pp", "op") + "\\."
ACRONYM_FOLLOWERS = (
    "(?:"
    + "|".join(
        w[0] + _ci(w[1:])
        for w in sorted(
            "About According Additionally After An A As At But Earlier He Her Here However If In It Last Many More "
            "Mr. Ms. Now Once One Other Our She Since So Some Such That The Their Then There These They This We "
            "When While What Yet You".split(),
            key=len,
            reverse=True,
        )
    )
    + f"|{SGML})"
)
PHONE_A = (
    "(?:\\([0-9]{2,3}\\)[ \\u00a0]?|(?:\\+\\+?)?(?:[0-9]{2,4}[- \\u00a0])?[0-9]{2,4}[- \\u00a0])"
    "[0-9]{3,4}[- \\u00a0]?[0-9]{3,5}"
)
PHONE_B = "(?:(?:\\+\\+?)?[0-9]{2,4}\\.)?[0-9]{2,4}\\.[0-9]{3,4}\\.[0-9]{3,5}"
FRAC = f"(?:[{_D}]{{1,4}}[- \\u00a0])?[{_D}]{{1,4}}(?:\\\\?/|\\u2044)[{_D}]{{1,4}}"
HTHING = "[A-Za-z0-9][A-Za-z0-9.,\\u00ad]*(?:-(?:" + ACRO2 + "\\.|[A-Za-z0-9\\u00ad]+))+"
THING = f"{THING_PART}(?:{HYPHEN}{THING_PART})*"
THINGA = "[A-Z]+(?:(?:[+&]|" + _ci("&amp;") + ")[A-Z]+)+"
THING3 = "[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
INSENTP = "[,;:\\u3001]"
FILENAME_EXT = _alt(
    *"bat bmp c class cgi cpp dll doc docx exe gif gz h htm html jar java jpeg jpg mov mp3 pdf php pl png ppt ps py "
    "sql tar txt wav x xml zip".split()
)
_EYE = "[-^x=~<>']"
ASIAN_SMILEYS = [
    "[\\^x=~<>]\\.\\[\\^x=~<>\\]",  # sic: the specification escapes the bracket, so this is literal text
    f"{_EYE}_{_EYE}",
    f"\\({_EYE}[_.]?{_EYE}\\)",
    "\\([\\^x=~<>']-[\\^x=~<>'`]\\)",
]
QUOTE_CHARS = (
    "[`\\u2018\\u2019\\u201a\\u201b\\u201c\\u201d\\u0091\\u0092\\u0093\\u0094\\u201e\\u201f"
    "\\u2039\\u203a\\u00ab\\u00bb]"
)
URL_HOST = "[^ \\t\\n\\f\\r\"`'<>|.!?(){}\\x2c-\\x5f$]"  # the JFlex class contains the range ",-_"
MISC_ASCII = "+%&~^|\\\\"

# --------------------------------------------------------------------------------------------------
# Token rewriting done by rule actions


def _latex_quotes(tok: str, probably_left: bool) -> str:
    if probably_left:
        tok = re.sub("&apos;|'", "`", tok)
        tok = re.sub('"|&quot;', "``", tok)
    else:
        tok = re.sub("&apos;|'", "'", tok)
        tok = re.sub('"|&quot;', "''", tok)
    tok = re.sub("[\u0091\u2018\u201b\u2039]", "`", tok)
    tok = re.sub("[\u0092\u2019\u203a]", "'", tok)
    tok = re.sub("[\u0093\u201c\u00ab]", "``", tok)
    return re.sub("[\u0094\u201d\u00bb]", "''", tok)


def _remove_soft_hyphens(tok: str) -> str:
    return tok.replace("\u00ad", "") or "-"


_AMP = re.compile("&amp;", re.IGNORECASE)
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_CURRENCY = {"\u00a2": "cents", "\u00a3": "#", "\u0080": "$", "\u00a4": "$", "\u20a0": "$", "\u20ac": "$"}
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}


def _parens(tok: str) -> str:
    return tok.replace("(", "-LRB-").replace(")", "-RRB-")


# An action maps the matched token text (r1 of r1/r2) to (token or None, number of characters consumed).
Action = Callable[[str], "tuple[str | None, int]"]


def _keep(tok: str) -> tuple[str | None, int]:
    return tok, len(tok)


def _rewrite(fn: Callable[[str], str]) -> Action:
    return lambda tok: (fn(tok), len(tok))


def _pushback(n: int) -> Action:
    return lambda tok: (tok[:-n], len(tok) - n)


def _duplicate_period(tok: str) -> tuple[str | None, int]:
    # The token keeps its final period and the period is lexed again as a sentence end.
    return tok, len(tok) - 1


def _acronym(tok: str) -> tuple[str | None, int]:
    if len(tok) == 2:  # "I." before a sentence start: the letter, then the period
        return tok[0], 1
    return tok, len(tok) - 1


def _skip(tok: str) -> tuple[str | None, int]:
    return None, len(tok)


def _dashes(tok: str) -> tuple[str | None, int]:
    return ("--" if 3 <= len(tok) <= 4 else tok), len(tok)


@dataclass(frozen=True)
class Rule:
    """One lexer rule: group ``t`` of ``pattern`` is the token text, the rest is trailing context."""

    pattern: re.Pattern[str]
    action: Action
    # Rules whose first match is not necessarily their longest get an exhaustive longest-match search,
    # over at most ``max_len`` characters (0: up to the end of the line).
    exhaustive: bool = False
    max_len: int = 0


def _rule(main: str, action: Action = _keep, context: str = "", exhaustive: bool = False, max_len: int = 0) -> Rule:
    """``main`` is the token text; ``context`` is trailing context that counts for length only."""
    return Rule(re.compile(f"(?P<t>{main}){context}"), action, exhaustive or max_len > 0, max_len)


_QUOTES_RIGHT = _rewrite(lambda t: _latex_quotes(t, False))
_QUOTES_LEFT = _rewrite(lambda t: _latex_quotes(t, True))
_SOFT = _rewrite(_remove_soft_hyphens)
_AMP_ACTION = _rewrite(lambda t: _AMP.sub("&", t))
_NBSP = _rewrite(lambda t: t.replace(" ", "\u00a0"))
_ABBREV_MAX = 32  # bound for the longest-match search of abbreviation rules


def _word_rules() -> list[Rule]:
    """From the start of the specification to the e-mail and Twitter rules."""
    apoword = [
        f"{APOS}[nN]{APOS}?",
        f"[lLdDjJ]{APOS}",
        _alt("Dunkin", "somethin", "ol") + APOS,
        APOS + _ci("em"),
        f"[A-HJ-XZn]{APOSETC}[{_L}]{{2}}[{_L}]*",
        f"{APOS}[2-9]0[sS]",
        APOS + _ci("til") + "[lL]?",
        f"[{_L}]+[aeiouyAEIOUY]{APOSETC}[aeiouA-Z][{_L}]*",
        APOS + _ci("cause"),
        _ci("cont'd") + "\\.?",
        _alt("nor'easter", "c'mon", "e'er", "s'mores", "ev'ry", "li'l", "nat'l"),
        f"[oO]{APOSETC}[oO]",
    ]
    url_end = '[^ \\t\\n\\f\\r"<>|.!?(){},-]'
    return [
        _rule(_ci("c++") + "|[cCfF]#"),
        _rule(_alt("cannot", "'twas"), _pushback(3)),
        _rule("'" + _ci("tis") + "|" + _alt("gonna", "gotta", "lemme", "gimme", "wanna"), _pushback(2)),
        _rule(SGML, _NBSP),
        _rule("&" + _alt("MD", "mdash", "ndash") + ";|[\\u0096\\u0097\\u2013\\u2014\\u2015]", _rewrite(lambda t: "--")),
        _rule(_ci("&amp;"), _AMP_ACTION),
        _rule("&(?:" + _alt("HT", "TL", "UR", "LR", "QC", "QL", "QR", "odq", "cdq") + "|#[0-9]+);"),
        _rule(WORD, _SOFT, REDAUX),
        _rule(SWORD, _SOFT, SREDAUX),
        _rule(WORD, _SOFT),
        *(_rule(p) for p in apoword),
        _rule(f"[yY]{APOS}", context=f"[{_L}]"),
        _rule(_ci("http") + "(?:" + _ci("s") + ')?://[^ \\t\\n\\f\\r"<>|(){}]+' + url_end),
        _rule(
            _ci("www.")
            + '(?:[^ \\t\\n\\f\\r"<>|.!?(){},]+\\.)+[a-zA-Z]{2,4}(?:/[^ \\t\\n\\f\\r"<>|()]+'
            + url_end
            + ")?",
            exhaustive=True,
        ),
        _rule(
            f"(?:{URL_HOST}+\\.)+" + _alt("com", "net", "org", "edu") + '(?:/[^ \\t\\n\\f\\r"<>|()]+' + url_end + ")?",
            exhaustive=True,
        ),
        _rule(
            "(?:<|" + _ci("&lt;") + ')?[a-zA-Z0-9][^ \\t\\n\\f\\r"<>|()\\u00a0{}]*@'
            '(?:[^ \\t\\n\\f\\r"<>|(){}.\\u00a0]+\\.)*[^ \\t\\n\\f\\r"<>|(){}.\\u00a0]+(?:>|' + _ci("&gt;") + ")?",
            exhaustive=True,
        ),
        _rule("@[a-zA-Z_][a-zA-Z_0-9]*|#" + LETTER + "+"),
    ]


def _number_rules() -> list[Rule]:
    """Contractions, dates, numbers, fractions, special tokens and currency."""
    tbspec = [
        "-" + _alt("RRB", "LRB", "RCB", "LCB", "RSB", "LSB") + "-",
        _ci("C.D.s"),
        _alt("pro-", "anti-"),
        _ci("S") + "(?:&|" + _ci("&amp;") + ")" + _ci("P-500"),
        _ci("S") + "(?:&|" + _ci("&amp;") + ")" + _ci("Ls"),
        _ci("Cap") + APOS + _ci("n"),
        _ci("c") + APOS + _ci("est"),
    ]
    return [
        _rule(REDAUX, _QUOTES_RIGHT, "[^A-Za-z]"),
        _rule(SREDAUX, _QUOTES_RIGHT),
        _rule(f"[{_D}]{{1,2}}[-/][{_D}]{{1,2}}[-/][{_D}]{{2,4}}", exhaustive=True),
        _rule(NUMBER, _SOFT),
        _rule("[\\u207a\\u207b\\u208a\\u208b]?(?:[\\u2070\\u00b9\\u00b2\\u00b3\\u2074-\\u2079]+|[\\u2080-\\u2089]+)"),
        _rule(FRAC, _NBSP, exhaustive=True),
        _rule("[\\u00bc\\u00bd\\u00be\\u2153-\\u215e]", _rewrite(lambda t: _FRACTIONS.get(t, t))),
        *(_rule(p, _AMP_ACTION) for p in tbspec),
        _rule(THING3, exhaustive=True),
        _rule("[A-Z]*\\$|#"),
        _rule(
            "[\\u00a2\\u00a3\\u00a4\\u00a5\\u0080\\u20a0\\u20ac\\u060b\\u0e3f\\u20a4\\uffe0\\uffe1\\uffe5\\uffe6]",
            _rewrite(lambda t: _CURRENCY.get(t, t)),
        ),
    ]


def _abbreviation_rules() -> list[Rule]:
    """Acronyms and abbreviations, whose period may also end the sentence; file names; phone numbers."""
    return [
        _rule(f"{ACRO}\\.", _acronym, f"{SPACENL}+{ACRONYM_FOLLOWERS}{SPACENL}", exhaustive=True),
        _rule(ABBREV3, context=f"{SPACENL}?[{_D}]", max_len=_ABBREV_MAX),
        _rule("(?:" + _ci("pt") + "[eyEY]|" + _ci("co") + ")\\.", context=f"{SPACE}" + _alt("ltd", "lim")),
        _rule(ABBREV1, _duplicate_period, SENTEND, exhaustive=True),
        _rule(ABBREV1, context="(?s:..)", max_len=_ABBREV_MAX),
        _rule(ABBREV1, _duplicate_period, max_len=_ABBREV_MAX),  # near the end of the text
        _rule(f"{ABBREV4}\\.", max_len=_ABBREV_MAX),
        _rule(ABBREV4, context=SPACE, max_len=_ABBREV_MAX),
        _rule(ACRO, context=SPACENL, max_len=_ABBREV_MAX),
        _rule(f"{APOS}[0-9][0-9]", context=SPACENL),
        _rule(
            f"{LETTER_DIGIT}+(?:\\.{LETTER_DIGIT}+)*\\.{FILENAME_EXT}", context=f"(?:{SPACENL}|[.?!,])", exhaustive=True
        ),
        _rule(f"{WORD}\\.", _SOFT, INSENTP),
        _rule(PHONE_A, _rewrite(lambda t: _parens(t.replace(" ", "\u00a0"))), exhaustive=True),
        _rule(PHONE_B, exhaustive=True),
    ]


def _punctuation_rules() -> list[Rule]:
    """Quotes, brackets, smileys, dashes, ellipses, other punctuation, hyphenated words, symbols."""
    return [
        _rule('"|' + _ci("&quot;"), _QUOTES_LEFT, "[A-Za-z0-9$]"),
        _rule('"|' + _ci("&quot;"), _QUOTES_RIGHT),
        _rule("\\x7f", _skip),
        _rule("<|" + _ci("&lt;"), _rewrite(lambda t: "<")),
        _rule(">|" + _ci("&gt;"), _rewrite(lambda t: ">")),
        _rule("[<>]?[:;=][-o*']?[()DPdpO\\\\{@|\\[\\]]", _rewrite(_parens), "[^A-Za-z0-9]"),
        *(_rule(p, _rewrite(_parens)) for p in ASIAN_SMILEYS),
        _rule("[{}\\[\\]()]", _rewrite(lambda t: _BRACKETS[t])),
        _rule("-+", _dashes),
        _rule("\\.{3,5}|(?:\\.[ \\u00a0]){2,4}\\.|[\\u0085\\u2026]", _rewrite(lambda t: "..."), exhaustive=True),
        _rule("@+|#+|_+"),
        _rule("\\*+|(?:\\\\\\*){1,3}"),
        _rule(INSENTP),
        _rule("[?!]+"),
        _rule("[.\\u00a1\\u00bf\\u037e\\u0589\\u061f\\u06d4\\u0700-\\u0702\\u07fa\\u3002]"),
        _rule("="),
        _rule("/"),
        _rule(f"{HTHING}\\.", _SOFT, INSENTP, exhaustive=True),
        _rule(HTHING, _SOFT, exhaustive=True),
        _rule(f"{THING}\\.", context=INSENTP),
        _rule(THING),
        _rule(f"{THINGA}\\.", _AMP_ACTION, INSENTP),
        _rule(THINGA, _AMP_ACTION),
        _rule("'", _QUOTES_LEFT, "[A-Za-z][^ \\t\\n\\r\\u00a0]"),
        _rule(REDAUX, _QUOTES_RIGHT),
        _rule(f"''|{QUOTE_CHARS}{{1,2}}|{APOS}", _QUOTES_RIGHT),
        _rule("<<|>>"),
        _rule(f"[{MISC_ASCII}{_SYMBOL}]"),
        _rule(f"\\x00|{SPACE}+|[\\u200b\\u200e\\u200f\\ufeff]", _skip),
        _rule(_ci("&nbsp;"), _skip),
    ]


def build_rules() -> list[Rule]:
    """The lexer rules in specification order (the order breaks ties between equally long matches)."""
    return [*_word_rules(), *_number_rules(), *_abbreviation_rules(), *_punctuation_rules()]
