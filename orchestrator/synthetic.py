"""Deterministic synthetic music catalogue (tracks, artists, albums, playlists, podcasts) + queries.

Needs no data files and scales from 1k to 1M+ documents:

* Every document is a pure function of ``(seed, global index)``: attributes come from a
  splitmix64 hash of the index, relations are index arithmetic (album ``j`` belongs to artist
  ``j * A // B``; track ``k`` to album ``k * B // T``), so generation streams in O(vocabulary)
  memory and any document can be built on its own (:meth:`SyntheticCatalog.doc`).
* Popularity is Zipf (exponent ``zipf_s``, default 1.0) over a pseudo-random permutation of
  all documents: ``popularity = 100 / (rank + 1) ** s`` with ``rank = perm(index)``. The
  permutation is a 4-round Feistel network with cycle walking (O(1) memory, invertible, so
  popular documents can be sampled directly).
* Names and titles come from fixed word/syllable lists in this module: two-word artist names
  ("Taylor Swan"), syllable names ("Kalo Venmira"), bands ("The Silver Foxes"); a share of
  tracks get deliberately ambiguous one-word titles ("Love", "Home", "Hello") shared by many.

Queries (:func:`generate_queries`, :func:`write_synthetic`) carry an ``intent``:
``exact_title``, ``artist``, ``genre``, ``misspelled`` (1-2 character edits of an exact-title or
artist query) and ``ambiguous`` (a shared one-word title). Grades (qrels):

* exact_title: the sampled target track 3; other tracks with exactly that title 2; versions
  ("<title> (Remix)") and albums with that title 1. Capped at the 100 most popular matches.
* artist: artist documents with that name 3; their albums 2; their 50 most popular tracks 1.
* genre: "<subgenre>" / "<subgenre> music": playlists of the subgenre 3 (top 50), artists 2
  (top 20), tracks 1 (top 30); "<genre> playlist": playlists of the genre 3 (top 50);
  "<topic> podcast": podcasts on the topic 3 (top 50).
* ambiguous: tracks titled exactly the word, graded by popularity: top 3 -> 3, next 7 -> 2,
  next 40 -> 1 (the least popular same-title tracks stay unjudged).
* misspelled: the qrels of the correctly spelled query (``base_text``).

CLI: ``python -m orchestrator.synthetic OUT --docs N --queries M --seed S``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .datasets import DatasetSpec, write_jsonl, write_qrels, write_spec

__all__ = [
    "ENTITY_TYPES",
    "GENRES",
    "PODCAST_TOPICS",
    "AMBIGUOUS_TITLES",
    "INTENTS",
    "SyntheticCatalog",
    "SyntheticQuery",
    "generate_corpus",
    "generate_queries",
    "write_synthetic",
    "edit_distance",
    "synthetic_spec",
]

# ---------------------------------------------------------------------------------- vocabulary

ENTITY_TYPES = ("artist", "album", "track", "playlist", "podcast")
_FRACTIONS = {"artist": 0.06, "album": 0.12, "playlist": 0.05, "podcast": 0.04}  # tracks: the rest
_ID_PREFIX = {"artist": "art", "album": "alb", "track": "trk", "playlist": "pls", "podcast": "pod"}

# genre -> subgenres (subgenre names are unique across genres); weights ~ real-world share
GENRES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "pop": ("dance pop", "synth pop", "indie pop", "k-pop", "teen pop"),
    "rock": ("classic rock", "indie rock", "hard rock", "punk rock", "alternative rock"),
    "hip-hop": ("trap", "boom bap", "conscious hip-hop", "drill"),
    "electronic": ("house", "techno", "ambient", "drum and bass", "dubstep"),
    "r&b": ("neo soul", "contemporary r&b", "funk"),
    "latin": ("reggaeton", "salsa", "bachata", "latin pop"),
    "country": ("bluegrass", "outlaw country", "country pop"),
    "jazz": ("bebop", "smooth jazz", "swing", "jazz fusion"),
    "classical": ("baroque", "romantic era", "minimalism", "opera"),
    "metal": ("heavy metal", "death metal", "metalcore"),
    "folk": ("indie folk", "americana", "celtic folk"),
    "reggae": ("roots reggae", "dancehall", "dub"),
    "blues": ("delta blues", "chicago blues", "electric blues"),
})
_GENRE_WEIGHTS = (18, 14, 13, 11, 7, 7, 6, 5, 4, 4, 4, 3, 3)
PODCAST_TOPICS = ("news", "comedy", "true crime", "technology", "history", "science", "sports",
                  "business", "health", "education", "music history", "film")

FIRST_NAMES = (
    "Taylor", "Jordan", "Alex", "Sam", "Casey", "Riley", "Morgan", "Jamie", "Avery", "Quinn",
    "Harper", "Rowan", "Skyler", "Emery", "Dakota", "Reese", "Parker", "Sage", "Kai", "Nova",
    "Luna", "Mila", "Ella", "Ava", "Zoe", "Ivy", "Ruby", "Hazel", "Iris", "Stella", "Maya",
    "Leo", "Max", "Finn", "Milo", "Jude", "Theo", "Owen", "Eli", "Ezra", "Miles", "Oscar",
    "Felix", "Hugo", "Jasper", "Silas", "Marcus", "Andre", "Carlos", "Diego", "Mateo", "Luis",
    "Rosa", "Elena", "Sofia", "Camila", "Amara", "Zara", "Nia", "Kiara", "Aaliyah", "Jada",
    "Billie", "Frankie", "Charlie", "Bobby", "Johnny", "Tommy", "Danny", "Ricky", "Lola", "Gigi",
    "Yuki", "Hana", "Min", "Jin", "Ravi", "Anika", "Omar", "Layla", "Nadia", "Soren",
)
LAST_NAMES = (
    "Swan", "Rivers", "Stone", "Hart", "Knight", "Fox", "Wolfe", "Lane", "Brooks", "Hayes",
    "Cole", "Reed", "Gray", "West", "North", "Woods", "Banks", "Frost", "Blake", "Chase",
    "Monroe", "Carter", "Bennett", "Parker", "Sinclair", "Vance", "Lowe", "Price", "Shaw", "Wilde",
    "Moreno", "Vega", "Castillo", "Rojas", "Silva", "Santos", "Costa", "Reyes", "Navarro", "Cruz",
    "Kim", "Park", "Lee", "Tanaka", "Sato", "Chen", "Wang", "Patel", "Shah", "Khan",
    "Okafor", "Adeyemi", "Mensah", "Diallo", "Novak", "Petrov", "Larsen", "Berg", "Lindqvist", "Moreau",
    "Dubois", "Rossi", "Romano", "Keller", "Fischer", "Weber", "Byrne", "Doyle", "Quinlan", "Marsh",
    "Holloway", "Whitfield", "Ashford", "Sterling", "Mercer", "Calloway", "Harlow", "Everly", "Sloane", "Winter",
)
SYLLABLES = (
    "ka", "lo", "mi", "ra", "ven", "ta", "zen", "el", "shi", "no", "va", "ri", "so", "len",
    "dar", "mo", "ne", "ly", "ko", "sa", "vi", "an", "tor", "bel", "cy", "dra", "fen", "gal",
    "ha", "jo", "kai", "lun", "mar", "nyx", "or", "pe", "qui", "rho", "sel", "tu", "ul", "wyn",
    "xa", "ya", "zo", "bri", "cas", "del",
)
ADJECTIVES = (
    "Golden", "Silver", "Broken", "Electric", "Midnight", "Velvet", "Wild", "Quiet", "Burning",
    "Frozen", "Hollow", "Crimson", "Neon", "Lonely", "Secret", "Sweet", "Bitter", "Endless",
    "Fading", "Falling", "Rising", "Shining", "Silent", "Distant", "Gentle", "Restless", "Sacred",
    "Savage", "Tender", "Wicked", "Blue", "Black", "White", "Red", "Green", "Purple", "Amber",
    "Cosmic", "Lucky", "Little", "Big", "Young", "Old", "New", "Last", "First", "Hidden", "Lost",
    "Dancing", "Sleeping", "Dreaming", "Heavy", "Bright", "Dark", "Cold", "Warm", "Summer",
    "Winter", "Autumn", "Spring", "Paper", "Glass", "Diamond", "Stone", "Crystal", "Ocean",
    "Desert", "Northern", "Southern", "Eastern", "Western", "Holy", "Happy", "Sad", "Crazy",
    "Perfect", "Beautiful", "Dangerous", "Fearless", "Infinite", "Magnetic", "Radiant",
    "Starry", "Stormy", "Sunny", "Misty", "Dusty", "Rusty", "Faded", "Hazy", "Lazy", "Honest",
    "Reckless", "Careless", "Timeless", "Weightless", "Breathless",
)
NOUNS = (
    "River", "Heart", "Fire", "Sky", "Road", "Night", "Dream", "Ocean", "Rain", "Star", "Moon",
    "Sun", "City", "Light", "Shadow", "Storm", "Wave", "Flower", "Rose", "Garden", "Mountain",
    "Valley", "Highway", "Street", "Window", "Mirror", "Letter", "Song", "Melody", "Rhythm",
    "Echo", "Thunder", "Lightning", "Horizon", "Island", "Harbor", "Train", "Car", "Bridge",
    "Tower", "Castle", "Kingdom", "Empire", "Angel", "Devil", "Ghost", "Spirit", "Soul", "Mind",
    "Memory", "Promise", "Secret", "Lie", "Truth", "Wish", "Prayer", "Story", "Game", "Dance",
    "Party", "Crowd", "Stranger", "Lover", "Friend", "Enemy", "Hero", "Queen", "King", "Baby",
    "Girl", "Boy", "Child", "Wolf", "Tiger", "Lion", "Bird", "Butterfly", "Horse", "Snake",
    "Diamond", "Gold", "Silver", "Glass", "Smoke", "Ash", "Dust", "Sand", "Snow", "Ice",
    "Summer", "Winter", "Autumn", "Morning", "Evening", "Sunset", "Sunrise", "Daylight",
    "Midnight", "Weekend", "Holiday", "Season", "Circle", "Line", "Signal", "Radio", "Machine",
    "Engine", "Satellite", "Planet", "Galaxy", "Universe", "Comet", "Orbit", "Paradise",
    "Heaven", "Desert", "Forest", "Jungle", "Meadow", "Lake",
)
_IRREGULAR_PLURALS = {"Child": "Children", "Wolf": "Wolves", "Butterfly": "Butterflies", "Party": "Parties",
                      "Enemy": "Enemies", "Story": "Stories", "Baby": "Babies", "Lie": "Lies", "Sky": "Skies",
                      "Galaxy": "Galaxies", "Memory": "Memories", "Ash": "Ashes", "Dust": "Dust", "Sand": "Sands",
                      "Snow": "Snows", "Ice": "Ice", "Gold": "Gold", "Silver": "Silver", "Glass": "Glasses",
                      "Smoke": "Smoke", "Heaven": "Heavens", "Paradise": "Paradise"}
VERBS_ING = (
    "Chasing", "Running", "Falling", "Waiting", "Dancing", "Dreaming", "Burning", "Breaking",
    "Holding", "Losing", "Finding", "Calling", "Leaving", "Counting", "Fighting", "Flying",
    "Driving", "Walking", "Singing", "Crying", "Shaking", "Saving", "Missing", "Touching",
    "Building", "Crossing", "Drowning", "Stealing", "Following", "Remembering",
)
# one-word titles deliberately shared by many tracks (disjoint from NOUNS/ADJECTIVES)
AMBIGUOUS_TITLES = ("Love", "Home", "Hello", "Stay", "Forever", "Tonight", "Alone", "Yesterday",
                    "Sorry", "Goodbye", "Closer", "Believe", "Runaway", "Happiness", "Lullaby", "Together")
VERSION_TAGS = ("Remix", "Acoustic", "Live", "Radio Edit", "Remastered", "Extended Mix", "Demo")
MOODS = ("chill", "upbeat", "melancholic", "energetic", "dreamy", "dark", "romantic", "nostalgic",
         "aggressive", "uplifting", "mellow", "hypnotic", "playful", "epic", "intimate")
THEMES = ("first love", "heartbreak", "summer nights", "leaving home", "late-night drives", "friendship",
          "growing up", "city life", "the ocean", "freedom", "loss", "hope", "rebellion", "dancing till dawn",
          "long distance", "small towns", "new beginnings", "regret", "fame", "faith")
ACTIVITIES = ("Workout", "Focus", "Study", "Sleep", "Party", "Road Trip", "Dinner", "Morning Coffee",
              "Rainy Day", "Late Night", "Running", "Cooking", "Gaming", "Relax", "Commute")
PLAYLIST_SUFFIXES = ("Essentials", "Hits", "Classics", "Mix", "Radar", "Gems", "Anthems", "Vibes", "Favorites")
PODCAST_WORDS = ("Show", "Podcast", "Hour", "Report", "Files", "Hour", "Club", "Lab", "Diaries", "Talk")
CITIES = ("Nashville", "Atlanta", "Los Angeles", "New York", "London", "Manchester", "Berlin", "Paris",
          "Stockholm", "Seoul", "Tokyo", "Lagos", "Accra", "Kingston", "Havana", "San Juan", "Mexico City",
          "Sao Paulo", "Buenos Aires", "Toronto", "Montreal", "Melbourne", "Dublin", "Chicago", "Detroit",
          "New Orleans", "Memphis", "Austin", "Seattle", "Bristol", "Glasgow", "Reykjavik", "Lisbon", "Madrid")
_ARTIST_KIND = {"hip-hop": "rapper", "electronic": "producer", "classical": "ensemble", "jazz": "quartet"}

INTENTS = ("exact_title", "artist", "genre", "misspelled", "ambiguous")
_INTENT_WEIGHTS = (30, 20, 15, 20, 15)

# keyboard neighbours for realistic substitutions
_KEY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS: dict[str, str] = {}
for _r, _row in enumerate(_KEY_ROWS):
    for _c, _ch in enumerate(_row):
        _n = [_row[i] for i in (_c - 1, _c + 1) if 0 <= i < len(_row)]
        for _rr in (_r - 1, _r + 1):
            if 0 <= _rr < len(_KEY_ROWS):
                _n += [_KEY_ROWS[_rr][i] for i in (_c - 1, _c) if 0 <= i < len(_KEY_ROWS[_rr])]
        _NEIGHBOURS[_ch] = "".join(dict.fromkeys(_n))
_VOWELS = "aeiouy"

# ------------------------------------------------------------------------------------ hashing

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix(x: int) -> int:
    """splitmix64 finaliser: a fast, well-mixed 64-bit hash of a 64-bit integer."""
    x = (x + _GOLDEN) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class _Rng:
    """Tiny deterministic RNG (splitmix64 stream); independent of Python's ``random``."""

    __slots__ = ("_s",)

    def __init__(self, seed: int) -> None:
        self._s = _mix(seed & _M64)

    def next(self) -> int:
        self._s = (self._s + _GOLDEN) & _M64
        return _mix(self._s)

    def random(self) -> float:
        return (self.next() >> 11) * (1.0 / (1 << 53))

    def below(self, n: int) -> int:
        return self.next() % n

    def choice(self, seq):
        return seq[self.next() % len(seq)]

    def weighted(self, weights) -> int:
        total = sum(weights)
        x = self.next() % total
        for i, w in enumerate(weights):
            if x < w:
                return i
            x -= w
        return len(weights) - 1


class _Permutation:
    """Pseudo-random permutation of range(n): Feistel network + cycle walking, O(1) memory."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits & 1
        self.half = bits // 2
        self.mask = (1 << self.half) - 1
        self.keys = tuple(_mix((seed * 0x100000001B3 + r * 0x51ED27) & _M64) for r in range(4))

    def _enc(self, x: int) -> int:
        h, m = self.half, self.mask
        left, right = x >> h, x & m
        for k in self.keys:
            left, right = right, left ^ (_mix(right ^ k) & m)
        return (left << h) | right

    def _dec(self, y: int) -> int:
        h, m = self.half, self.mask
        left, right = y >> h, y & m
        for k in reversed(self.keys):
            left, right = right ^ (_mix(left ^ k) & m), left
        return (left << h) | right

    def __call__(self, x: int) -> int:
        y = self._enc(x)
        while y >= self.n:
            y = self._enc(y)
        return y

    def inverse(self, y: int) -> int:
        x = self._dec(y)
        while x >= self.n:
            x = self._dec(x)
        return x


def _plural(noun: str) -> str:
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


def _a(word: str) -> str:
    """'a' or 'an' + word."""
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def _base_title(title: str) -> str:
    """'Golden River (Remix)' -> 'Golden River'."""
    if title.endswith(")") and " (" in title:
        return title[: title.rindex(" (")]
    return title


def edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insert, delete, substitute, adjacent transpose (cost 1)."""
    if a == b:
        return 0
    la, lb = len(a), len(b)
    prev2: list[int] = []
    prev = list(range(lb + 1))
    for i in range(1, la + 1):
        cur = [i] + [0] * lb
        for j in range(1, lb + 1):
            cost = a[i - 1] != b[j - 1]
            v = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                v = min(v, prev2[j - 2] + 1)
            cur[j] = v
        prev2, prev = prev, cur
    return prev[lb]


# ----------------------------------------------------------------------------------- catalogue

# salts per entity kind / purpose
_S_ARTIST, _S_ALBUM, _S_TRACK, _S_PLAYLIST, _S_PODCAST = 0xA1, 0xB2, 0xC3, 0xD4, 0xE5


@dataclass(frozen=True)
class _Artist:
    idx: int
    name: str
    genre: str
    subgenre: str
    since: int
    city: str
    band: bool


@dataclass(frozen=True)
class _Album:
    idx: int
    title: str
    artist: int
    year: int
    subgenre: str
    first_track: int
    n_tracks: int


class SyntheticCatalog:
    """A deterministic catalogue of ``n_docs`` documents; iterate it or build single docs."""

    def __init__(self, n_docs: int, seed: int = 0, *, zipf_s: float = 1.0) -> None:
        if n_docs < 5:
            raise ValueError(f"n_docs must be >= 5 (one of each entity type), got {n_docs}")
        self.n_docs = int(n_docs)
        self.seed = int(seed)
        self.zipf_s = float(zipf_s)
        counts = {k: max(1, int(n_docs * f)) for k, f in _FRACTIONS.items()}
        counts["track"] = n_docs - sum(counts.values())
        self.counts: dict[str, int] = {k: counts[k] for k in ENTITY_TYPES}
        self.offsets: dict[str, int] = {}
        off = 0
        for k in ENTITY_TYPES:
            self.offsets[k] = off
            off += self.counts[k]
        self._width = {k: max(6, len(str(self.counts[k] - 1))) for k in ENTITY_TYPES}
        self._perm = _Permutation(n_docs, self.seed)
        self._base = _mix(self.seed & _M64)
        self._genres = tuple(GENRES)
        self._album_cache: _Album | None = None
        self._artist_cache: _Artist | None = None

    # -- hashing helpers ------------------------------------------------------------------
    def _h(self, salt: int, idx: int, k: int = 0) -> int:
        return _mix(self._base ^ _mix((salt << 48) ^ (k << 40) ^ idx))

    # -- ids, ranks -----------------------------------------------------------------------
    def doc_id(self, etype: str, idx: int) -> str:
        return f"{_ID_PREFIX[etype]}_{idx:0{self._width[etype]}d}"

    def locate(self, g: int) -> tuple[str, int]:
        """Global index -> (entity type, per-type index)."""
        if not 0 <= g < self.n_docs:
            raise IndexError(g)
        for k in reversed(ENTITY_TYPES):
            if g >= self.offsets[k]:
                return k, g - self.offsets[k]
        raise AssertionError

    def rank(self, g: int) -> int:
        """Popularity rank (0 = most popular) of the document at global index g."""
        return self._perm(g)

    def index_of_rank(self, r: int) -> int:
        return self._perm.inverse(r)

    def popularity_of_rank(self, r: int) -> float:
        return float(f"{100.0 / (r + 1) ** self.zipf_s:.6g}")

    # -- entities -------------------------------------------------------------------------
    def artist(self, a: int) -> _Artist:
        c = self._artist_cache
        if c is not None and c.idx == a:
            return c
        h = self._h(_S_ARTIST, a)
        h2 = _mix(h)
        style = h % 100
        if style < 45:
            name = f"{FIRST_NAMES[(h >> 8) % len(FIRST_NAMES)]} {LAST_NAMES[(h >> 20) % len(LAST_NAMES)]}"
            band = False
        elif style < 70:
            first = SYLLABLES[(h >> 8) % len(SYLLABLES)] + SYLLABLES[(h >> 16) % len(SYLLABLES)]
            last = "".join(SYLLABLES[(h >> s) % len(SYLLABLES)] for s in (24, 32, 40)[: 2 + (h >> 48) % 2])
            name = f"{first.capitalize()} {last.capitalize()}"
            band = False
        elif style < 90:
            name = f"The {ADJECTIVES[(h >> 8) % len(ADJECTIVES)]} {_plural(NOUNS[(h >> 20) % len(NOUNS)])}"
            band = True
        else:
            name = (SYLLABLES[(h >> 8) % len(SYLLABLES)] + SYLLABLES[(h >> 16) % len(SYLLABLES)]
                    + ("" if (h >> 30) % 3 else SYLLABLES[(h >> 24) % len(SYLLABLES)])).capitalize()
            band = False
        genre = self._genres[_weighted(h2 % sum(_GENRE_WEIGHTS), _GENRE_WEIGHTS)]
        subs = GENRES[genre]
        sub = subs[(h2 >> 16) % len(subs)]
        since = 2024 - int(60 * ((h2 >> 24) % 10007 / 10007) ** 2)  # skewed to recent
        city = CITIES[(h2 >> 40) % len(CITIES)]
        art = _Artist(a, name, genre, sub, since, city, band)
        self._artist_cache = art
        return art

    def album(self, j: int) -> _Album:
        c = self._album_cache
        if c is not None and c.idx == j:
            return c
        n_art, n_alb, n_trk = self.counts["artist"], self.counts["album"], self.counts["track"]
        a = j * n_art // n_alb
        art = self.artist(a)
        h = self._h(_S_ALBUM, j)
        style = h % 100
        if style < 35:
            title = f"{ADJECTIVES[(h >> 8) % len(ADJECTIVES)]} {_plural(NOUNS[(h >> 16) % len(NOUNS)])}"
        elif style < 55:
            title = NOUNS[(h >> 8) % len(NOUNS)]
        elif style < 70:
            title = f"{NOUNS[(h >> 8) % len(NOUNS)]} of {_plural(NOUNS[(h >> 16) % len(NOUNS)])}"
        elif style < 80:
            title = f"{VERBS_ING[(h >> 8) % len(VERBS_ING)]} {NOUNS[(h >> 16) % len(NOUNS)]}"
        elif style < 86:
            title = art.name  # self-titled
        elif style < 94:
            title = f"{ADJECTIVES[(h >> 8) % len(ADJECTIVES)]} {NOUNS[(h >> 16) % len(NOUNS)]}"
        else:
            title = f"{AMBIGUOUS_TITLES[(h >> 8) % len(AMBIGUOUS_TITLES)]} {NOUNS[(h >> 16) % len(NOUNS)]}"
        year = min(2024, art.since + int((h >> 24) % 12))
        subs = GENRES[art.genre]
        sub = art.subgenre if (h >> 32) % 4 else subs[(h >> 36) % len(subs)]
        first = -(-j * n_trk // n_alb)  # ceil(j * T / B)
        nxt = -(-(j + 1) * n_trk // n_alb)
        alb = _Album(j, title, a, year, sub, first, nxt - first)
        self._album_cache = alb
        return alb

    def album_of_track(self, k: int) -> int:
        n_alb, n_trk = self.counts["album"], self.counts["track"]
        j = k * n_alb // n_trk
        # k * B // T can undershoot ceil-based boundaries by one; fix up
        while j + 1 < n_alb and -(-(j + 1) * n_trk // n_alb) <= k:
            j += 1
        while j > 0 and -(-j * n_trk // n_alb) > k:
            j -= 1
        return j

    def albums_of_artist(self, a: int) -> range:
        n_art, n_alb = self.counts["artist"], self.counts["album"]
        lo = -(-a * n_alb // n_art)
        hi = -(-(a + 1) * n_alb // n_art)
        return range(lo, hi)

    # -- documents ------------------------------------------------------------------------
    def doc(self, g: int) -> dict[str, Any]:
        """The document at global index g (0 <= g < n_docs)."""
        return self._doc(g)[0]

    def _doc(self, g: int) -> tuple[dict[str, Any], int]:
        etype, i = self.locate(g)
        r = self._perm(g)
        pop = self.popularity_of_rank(r)
        if etype == "track":
            d = self._track(i, pop)
        elif etype == "artist":
            d = self._artist_doc(i, pop)
        elif etype == "album":
            d = self._album_doc(i, pop)
        elif etype == "playlist":
            d = self._playlist(i, pop)
        else:
            d = self._podcast(i, pop)
        return d, r

    def _track(self, k: int, pop: float) -> dict[str, Any]:
        alb = self.album(self.album_of_track(k))
        art = self.artist(alb.artist)
        h = self._h(_S_TRACK, k)
        style = h % 100
        a_ = ADJECTIVES[(h >> 8) % len(ADJECTIVES)]
        n1 = NOUNS[(h >> 16) % len(NOUNS)]
        n2 = NOUNS[(h >> 24) % len(NOUNS)]
        if style < 9:
            title = AMBIGUOUS_TITLES[(h >> 8) % len(AMBIGUOUS_TITLES)]
        elif style < 40:
            title = f"{a_} {n1}"
        elif style < 53:
            title = f"{VERBS_ING[(h >> 8) % len(VERBS_ING)]} {_plural(n1)}"
        elif style < 63:
            title = f"{n1} of the {n2}" if n1 != n2 else f"{n1} of Mine"
        elif style < 72:
            title = f"{n1} in the {n2}" if n1 != n2 else f"{n1} in the Rain"
        elif style < 82:
            title = f"{AMBIGUOUS_TITLES[(h >> 8) % len(AMBIGUOUS_TITLES)]} {n1}"
        elif style < 90:
            title = n1
        else:
            base = f"{a_} {n1}" if (h >> 32) % 2 else f"{VERBS_ING[(h >> 8) % len(VERBS_ING)]} {_plural(n1)}"
            title = f"{base} ({VERSION_TAGS[(h >> 40) % len(VERSION_TAGS)]})"
        if k == alb.first_track and (h >> 44) % 3 == 0 and alb.title != art.name:
            title = alb.title  # title track
        h2 = _mix(h)
        mood = MOODS[h2 % len(MOODS)]
        theme = THEMES[(h2 >> 8) % len(THEMES)]
        duration = 95_000 + int((h2 >> 16) % 1000 / 1000 * 150_000) + int((h2 >> 32) % 1000 / 1000 * 130_000)
        number = k - alb.first_track + 1
        tmpl = (h2 >> 48) % 3
        if tmpl == 0:
            text = (f"{title} is {_a(mood)} {alb.subgenre} track by {art.name} from the {alb.year} album "
                    f"{alb.title}. A song about {theme}.")
        elif tmpl == 1:
            text = (f"{mood.capitalize()} {art.genre} song by {art.name} about {theme}, track {number} on "
                    f"{alb.title} ({alb.year}), {alb.subgenre}.")
        else:
            text = (f"From {art.name}'s {alb.year} record {alb.title}: {_a(mood)} {alb.subgenre} cut about "
                    f"{theme}.")
        return {
            "_id": self.doc_id("track", k),
            "title": title,
            "text": text,
            "entity_type": "track",
            "genre": art.genre,
            "subgenre": alb.subgenre,
            "artist": art.name,
            "album": alb.title,
            "mood": mood,
            "year": alb.year,
            "duration_ms": duration,
            "track_number": number,
            "popularity": pop,
            "artist_id": self.doc_id("artist", art.idx),
            "album_id": self.doc_id("album", alb.idx),
        }

    def _artist_doc(self, a: int, pop: float) -> dict[str, Any]:
        art = self.artist(a)
        albums = [self.album(j).title for j in self.albums_of_artist(a)[:3]]
        kind = "band" if art.band else _ARTIST_KIND.get(art.genre, "singer-songwriter")
        text = f"{art.name} is {_a(art.subgenre)} {kind} from {art.city}, making {art.genre} music since {art.since}."
        if albums:
            text += f" Albums include {', '.join(albums)}."
        return {
            "_id": self.doc_id("artist", a),
            "title": art.name,
            "text": text,
            "entity_type": "artist",
            "genre": art.genre,
            "subgenre": art.subgenre,
            "artist": art.name,
            "year": art.since,
            "popularity": pop,
        }

    def _album_doc(self, j: int, pop: float) -> dict[str, Any]:
        alb = self.album(j)
        art = self.artist(alb.artist)
        h = self._h(_S_ALBUM, j, 1)
        mood = MOODS[h % len(MOODS)]
        kind = "EP" if alb.n_tracks <= 4 else "album"
        text = (f"{alb.title} is a {alb.year} {alb.subgenre} {kind} by {art.name} with {alb.n_tracks} tracks; "
                f"{mood} {art.genre} from {art.city}.")
        return {
            "_id": self.doc_id("album", j),
            "title": alb.title,
            "text": text,
            "entity_type": "album",
            "genre": art.genre,
            "subgenre": alb.subgenre,
            "artist": art.name,
            "album": alb.title,
            "mood": mood,
            "year": alb.year,
            "duration_ms": alb.n_tracks * (180_000 + h % 60_000),
            "track_count": alb.n_tracks,
            "popularity": pop,
            "artist_id": self.doc_id("artist", art.idx),
        }

    def _playlist(self, p: int, pop: float) -> dict[str, Any]:
        h = self._h(_S_PLAYLIST, p)
        genre = self._genres[_weighted(h % sum(_GENRE_WEIGHTS), _GENRE_WEIGHTS)]
        subs = GENRES[genre]
        sub = subs[(h >> 16) % len(subs)]
        mood = MOODS[(h >> 24) % len(MOODS)]
        act = ACTIVITIES[(h >> 32) % len(ACTIVITIES)]
        style = (h >> 40) % 5
        if style == 0:
            title = f"{mood.capitalize()} {sub.title()}"
        elif style == 1:
            title = f"{sub.title()} {PLAYLIST_SUFFIXES[(h >> 44) % len(PLAYLIST_SUFFIXES)]}"
        elif style == 2:
            title = f"{act} {genre.title()}"
        elif style == 3:
            title = f"{genre.title()} {PLAYLIST_SUFFIXES[(h >> 44) % len(PLAYLIST_SUFFIXES)]}"
        else:
            title = f"{ADJECTIVES[(h >> 44) % len(ADJECTIVES)]} {sub.title()}"
        n = 20 + (h >> 50) % 180
        text = f"{_a(mood).capitalize()} {sub} playlist for {act.lower()}: {n} {genre} tracks."
        return {
            "_id": self.doc_id("playlist", p),
            "title": title,
            "text": text,
            "entity_type": "playlist",
            "genre": genre,
            "subgenre": sub,
            "mood": mood,
            "year": 2010 + int((h >> 56) % 15),
            "track_count": int(n),
            "popularity": pop,
        }

    def _podcast(self, q: int, pop: float) -> dict[str, Any]:
        h = self._h(_S_PODCAST, q)
        topic = PODCAST_TOPICS[h % len(PODCAST_TOPICS)]
        host = f"{FIRST_NAMES[(h >> 8) % len(FIRST_NAMES)]} {LAST_NAMES[(h >> 16) % len(LAST_NAMES)]}"
        style = (h >> 24) % 4
        word = PODCAST_WORDS[(h >> 28) % len(PODCAST_WORDS)]
        if style == 0:
            title = f"The {NOUNS[(h >> 32) % len(NOUNS)]} {word}"
        elif style == 1:
            title = f"{topic.title()} {('Weekly', 'Daily', 'Today', 'Unpacked', 'Explained')[(h >> 32) % 5]}"
        elif style == 2:
            title = f"{host.split()[1]} on {topic.title()}"
        else:
            title = f"{ADJECTIVES[(h >> 32) % len(ADJECTIVES)]} {topic.title()} {word}"
        minutes = 15 + (h >> 40) % 100
        text = f"{_a(topic).capitalize()} podcast hosted by {host}. Episodes run about {minutes} minutes."
        return {
            "_id": self.doc_id("podcast", q),
            "title": title,
            "text": text,
            "entity_type": "podcast",
            "genre": "podcast",
            "subgenre": topic,
            "host": host,
            "year": 2012 + int((h >> 48) % 13),
            "duration_ms": int(minutes) * 60_000,
            "popularity": pop,
        }

    # -- iteration ------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n_docs

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for g in range(self.n_docs):
            yield self._doc(g)[0]

    def _iter_ranked(self) -> Iterator[tuple[dict[str, Any], int]]:
        for g in range(self.n_docs):
            yield self._doc(g)

    def sample_index(self, rng: _Rng, etype: str | None = None, *, popular: float = 0.7) -> int:
        """Global index of a random doc (of ``etype``), Zipf-biased to popular docs with prob ``popular``."""
        lo, n = (0, self.n_docs) if etype is None else (self.offsets[etype], self.counts[etype])
        if rng.random() < popular:
            for _ in range(64):
                r = int(math.exp(rng.random() * math.log(self.n_docs + 1))) - 1
                g = self._perm.inverse(min(max(r, 0), self.n_docs - 1))
                if lo <= g < lo + n:
                    return g
        return lo + rng.below(n)


def _weighted(x: int, weights) -> int:
    for i, w in enumerate(weights):
        if x < w:
            return i
        x -= w
    return len(weights) - 1


def synthetic_spec(n_docs: int, seed: int) -> DatasetSpec:
    return DatasetSpec(
        name="synthetic_music",
        description=(
            f"Deterministic synthetic music catalogue (orchestrator.synthetic, seed={seed}, {n_docs} docs): "
            "tracks, artists, albums, playlists, podcasts with Zipf popularity. Queries are generated "
            "with intents exact_title/artist/genre/misspelled/ambiguous; qrels follow the generator's "
            "rules (see orchestrator/synthetic.py), not human judgments."
        ),
        facets=("genre", "subgenre", "artist", "album", "mood", "host"),  # entity_type has its own role
        popularity="popularity",
        entity_type="entity_type",
        numeric=("year", "duration_ms", "track_count", "track_number"),
        splits=("test",),
    )


def generate_corpus(n_docs: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Stream the corpus rows (BEIR corpus.jsonl objects) of a catalogue."""
    return iter(SyntheticCatalog(n_docs, seed))


# -------------------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class SyntheticQuery:
    id: str
    text: str
    intent: str
    target: str | None
    base_text: str | None
    qrels: Mapping[str, int] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"_id": self.id, "text": self.text, "intent": self.intent}
        if self.target is not None:
            row["target"] = self.target
        if self.base_text is not None:
            row["base_text"] = self.base_text
        return row


# A rule: documents of entity type ``etype`` whose key ``kind`` ("title", "base", "artist",
# "subgenre", "genre") equals ``value`` are judged; the most popular are graded by ``tiers``
# ((count, grade), ...) and the rest ignored.
@dataclass(frozen=True)
class _Rule:
    etype: str
    kind: str
    value: str
    tiers: tuple[tuple[int, int], ...]

    @property
    def cap(self) -> int:
        return sum(n for n, _ in self.tiers)


@dataclass
class _Plan:
    text: str
    intent: str
    target: str | None
    base_text: str | None
    rules: tuple[_Rule, ...]
    boost: dict[str, int] = field(default_factory=dict)  # doc id -> grade overriding rules


def _misspell(text: str, rng: _Rng) -> str:
    """Apply 1 (or, for long strings, sometimes 2) character edits inside words of length >= 4,
    never touching a word's first letter. Always returns a string different from ``text``."""
    for _attempt in range(20):
        out = text
        n_edits = 2 if len(text) >= 12 and rng.random() < 0.3 else 1
        for _ in range(n_edits):
            words = out.split(" ")
            cands = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
            if not cands:
                cands = [i for i, w in enumerate(words) if len(w) >= 3] or [max(range(len(words)), key=lambda i: len(words[i]))]
            wi = rng.choice(cands)
            w = words[wi]
            if len(w) < 2:
                continue
            pos = 1 + rng.below(len(w) - 1)
            op = rng.below(4)
            ch = w[pos]
            if op == 0:  # substitute: vowel for vowel, else keyboard neighbour
                if ch in _VOWELS:
                    sub = rng.choice([v for v in _VOWELS if v != ch])
                else:
                    sub = rng.choice(_NEIGHBOURS.get(ch, "e") or "e")
                w = w[:pos] + sub + w[pos + 1:]
            elif op == 1:  # delete
                w = w[:pos] + w[pos + 1:]
            elif op == 2 and pos + 1 < len(w):  # transpose
                w = w[:pos] + w[pos + 1] + w[pos] + w[pos + 2:]
            else:  # double a letter
                w = w[:pos] + ch + w[pos:]
            words[wi] = w
            out = " ".join(words)
        if out != text and out.strip():
            return out
    return text + text[-1]  # fallback: one insertion


def _plan_queries(cat: SyntheticCatalog, n_queries: int, seed: int) -> list[_Plan]:
    rng = _Rng(_mix((seed ^ 0x5EED_0F_0E7E5) & _M64) ^ cat.seed)
    plans: list[_Plan] = []
    used: set[str] = set()
    ambiguous_left = [w.lower() for w in AMBIGUOUS_TITLES]
    genre_keys_used: set[str] = set()

    def exact_title_plan() -> _Plan | None:
        g = cat.sample_index(rng, "track")
        d = cat.doc(g)
        title = d["title"]
        if title in AMBIGUOUS_TITLES or _base_title(title) != title:
            return None
        q = _norm(title)
        rules = (
            _Rule("track", "title", q, ((100, 2),)),
            _Rule("track", "base", q, ((50, 1),)),
            _Rule("album", "title", q, ((20, 1),)),
        )
        return _Plan(q, "exact_title", d["_id"], None, rules, {d["_id"]: 3})

    def artist_plan() -> _Plan | None:
        g = cat.sample_index(rng, "track")  # popular tracks -> their artists
        t = cat.doc(g)
        q = _norm(t["artist"])
        rules = (
            _Rule("artist", "artist", q, ((20, 3),)),
            _Rule("album", "artist", q, ((40, 2),)),
            _Rule("track", "artist", q, ((50, 1),)),
        )
        return _Plan(q, "artist", t["artist_id"], None, rules)

    def genre_plan() -> _Plan | None:
        # sample from the entity type the rule grades highest, so every plan has a grade-3 match
        form = rng.below(5)
        if form == 0:
            d = cat.doc(cat.sample_index(rng, "playlist", popular=0.0))
            key, q = f"genre:{d['genre']}", f"{d['genre']} playlist"
            rules: tuple[_Rule, ...] = (_Rule("playlist", "genre", d["genre"], ((50, 3),)),)
        elif form == 1:
            d = cat.doc(cat.sample_index(rng, "podcast", popular=0.0))
            key, q = f"podcast:{d['subgenre']}", f"{d['subgenre']} podcast"
            rules = (_Rule("podcast", "subgenre", d["subgenre"], ((50, 3),)),)
        else:
            d = cat.doc(cat.sample_index(rng, "playlist" if form == 2 else "track", popular=0.0))
            key = f"sub:{d['subgenre']}"
            q = d["subgenre"] if form != 4 else f"{d['subgenre']} music"
            rules = (
                _Rule("playlist", "subgenre", d["subgenre"], ((50, 3),)),
                _Rule("artist", "subgenre", d["subgenre"], ((20, 2),)),
                _Rule("track", "subgenre", d["subgenre"], ((30, 1),)),
            )
        if key in genre_keys_used:
            return None
        genre_keys_used.add(key)
        return _Plan(q, "genre", None, None, rules)

    def ambiguous_plan() -> _Plan | None:
        if not ambiguous_left:
            return None
        w = ambiguous_left.pop(rng.below(len(ambiguous_left)))
        rules = (_Rule("track", "title", w, ((3, 3), (7, 2), (40, 1))),)
        return _Plan(w, "ambiguous", None, None, rules)

    def misspelled_plan() -> _Plan | None:
        base = exact_title_plan() if rng.below(2) else artist_plan()
        if base is None:
            return None
        text = _misspell(base.text, rng)
        return _Plan(text, "misspelled", base.target, base.text, base.rules, dict(base.boost))

    makers = {"exact_title": exact_title_plan, "artist": artist_plan, "genre": genre_plan,
              "misspelled": misspelled_plan, "ambiguous": ambiguous_plan}
    failures = 0
    max_failures = 50 * n_queries + 1000
    while len(plans) < n_queries and failures < max_failures:
        intent = INTENTS[rng.weighted(_INTENT_WEIGHTS)]
        plan = makers[intent]()
        if plan is None or plan.text in used:
            failures += 1
            continue
        used.add(plan.text)
        plans.append(plan)
    return plans


class _Judge:
    """Collects graded matches for many query plans in one streaming pass over the corpus."""

    def __init__(self, plans: list[_Plan]) -> None:
        self.plans = plans
        self.index: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
        self.heaps: list[list[list[tuple[int, str]]]] = []
        for qi, p in enumerate(plans):
            self.heaps.append([[] for _ in p.rules])
            for ri, rule in enumerate(p.rules):
                self.index.setdefault((rule.etype, rule.kind, rule.value), []).append((qi, ri))

    def observe(self, doc: Mapping[str, Any], rank: int) -> None:
        et = doc["entity_type"]
        title = _norm(doc["title"])
        keys = [(et, "title", title)]
        base = _norm(_base_title(doc["title"]))
        if base != title:
            keys.append((et, "base", base))
        if "artist" in doc:
            keys.append((et, "artist", _norm(doc["artist"])))
        keys.append((et, "subgenre", doc["subgenre"]))
        keys.append((et, "genre", doc["genre"]))
        index = self.index
        for key in keys:
            hits = index.get(key)
            if not hits:
                continue
            for qi, ri in hits:
                heap = self.heaps[qi][ri]
                item = (-rank, doc["_id"])
                cap = self.plans[qi].rules[ri].cap
                if len(heap) < cap:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)

    def finalize(self, id_width: int = 6) -> list[SyntheticQuery]:
        out: list[SyntheticQuery] = []
        n = 0
        for qi, p in enumerate(self.plans):
            grades: dict[str, int] = {}
            for ri, rule in enumerate(p.rules):
                ranked = sorted(self.heaps[qi][ri], reverse=True)  # most popular first
                pos = 0
                for count, grade in rule.tiers:
                    for _neg_rank, did in ranked[pos:pos + count]:
                        if grades.get(did, 0) < grade:
                            grades[did] = grade
                    pos += count
            for did, grade in p.boost.items():
                grades[did] = max(grades.get(did, 0), grade)
            if not grades:
                continue
            n += 1
            ordered = dict(sorted(grades.items(), key=lambda kv: (-kv[1], kv[0])))
            out.append(SyntheticQuery(f"q_{n:0{id_width}d}", p.text, p.intent, p.target, p.base_text,
                                      MappingProxyType(ordered)))
        return out


def generate_queries(n_docs: int, n_queries: int, seed: int = 0) -> list[SyntheticQuery]:
    """Queries with intents and graded qrels for the catalogue ``(n_docs, seed)``.

    Makes one streaming pass over the catalogue to collect matches (O(n_docs) time,
    O(n_queries) memory)."""
    cat = SyntheticCatalog(n_docs, seed)
    judge = _Judge(_plan_queries(cat, n_queries, seed))
    for doc, rank in cat._iter_ranked():
        judge.observe(doc, rank)
    return judge.finalize(max(6, len(str(n_queries))))


def write_synthetic(out: Path, n_docs: int, n_queries: int, seed: int = 0) -> dict[str, Any]:
    """Write corpus.jsonl, queries.jsonl, qrels/test.tsv and dataset.yaml under ``out``.

    One streaming pass: each document is written and shown to the query judge."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cat = SyntheticCatalog(n_docs, seed)
    judge = _Judge(_plan_queries(cat, n_queries, seed))
    by_type: Counter[str] = Counter()

    def stream() -> Iterator[dict[str, Any]]:
        for doc, rank in cat._iter_ranked():
            judge.observe(doc, rank)
            by_type[doc["entity_type"]] += 1
            yield doc

    n_written = write_jsonl(out / "corpus.jsonl", stream())
    queries = judge.finalize(max(6, len(str(n_queries))))
    write_jsonl(out / "queries.jsonl", (q.to_row() for q in queries))
    n_qrels = write_qrels(out / "qrels" / "test.tsv", ((q.id, d, g) for q in queries for d, g in q.qrels.items()))
    write_spec(out, synthetic_spec(n_docs, seed))
    return {
        "out": str(out),
        "seed": seed,
        "docs": n_written,
        "by_type": dict(by_type),
        "queries": len(queries),
        "queries_requested": n_queries,
        "by_intent": dict(Counter(q.intent for q in queries)),
        "qrels": n_qrels,
        "seconds": round(time.perf_counter() - t0, 3),
    }


# ------------------------------------------------------------------------------------------ cli


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m orchestrator.synthetic",
                                 description="Write a deterministic synthetic music catalogue in BEIR layout.")
    ap.add_argument("out", type=Path, help="output directory")
    ap.add_argument("--docs", type=int, default=10_000, help="number of documents (default 10000)")
    ap.add_argument("--queries", type=int, default=500, help="number of queries (default 500)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = ap.parse_args(argv)
    if args.docs < 5:
        ap.error("--docs must be >= 5")
    if args.queries < 0:
        ap.error("--queries must be >= 0")
    summary = write_synthetic(args.out, args.docs, args.queries, args.seed)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
