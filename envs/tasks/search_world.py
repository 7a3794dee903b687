"""The fictional encyclopedia behind ``env=search``: entities, facts, documents and questions.

Everything is drawn from ``random.Random(f"search-world/{seed}")``, so a world is a pure function of
its seed (default 0) and its sizes. Names are built from syllables (``Velar Quintash``,
``Ostravel``), so no fact is in any model's pretraining data: answers cannot be guessed without
searching (``BENCHMARKS.md`` measures a no-search baseline).

Entities and facts (all functional: one value per subject):

- country: currency (a made-up word), capital (one of its cities);
- city: the country it is in, the river through it;
- person: birth city, birth year, profession; some founded a company;
- company: founder (a person), headquarters (a city), founding year, industry.

One document per entity states its facts in a few sentences (the person's page names the company
they founded, the company's page names its founder, the city's page its country). A question
starts from one named entity and follows 1-3 relations (``QUESTION_TYPES``); each hop needs the
page of the entity reached so far, so a 3-hop question needs 3 searches. Default sizes: 30
countries, 150 cities, 600 people, 250 companies = 1,030 documents (~18k words); the question
space is about 1,880 one-hop, 1,470 two-hop and 1,100 three-hop questions, 20 % of them test.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

_ONSETS = ["b", "br", "d", "dr", "f", "g", "k", "kr", "l", "m", "n", "p", "qu", "r", "s", "st",
           "t", "th", "tr", "v", "z", "h", "c", "sh"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ia", "ou", "y"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "m", "x", "nd", "sk"]
_CITY_ENDS = ["holm", "vale", "port", "burg", "mere", "ford", "stad", "wick", "ora", "ence"]
_COUNTRY_ENDS = ["ia", "land", "istan", "ovia", "eria", "onia"]
_INDUSTRIES = ["shipping", "software", "textile", "mining", "brewing", "aviation", "pharmacy",
               "glassworks", "robotics", "publishing"]
_COMPANY_ENDS = ["Works", "Dynamics", "Holdings", "Labs", "Industries", "Company", "Systems",
                 "Group"]
PROFESSIONS = ["chemist", "architect", "painter", "engineer", "poet", "astronomer", "composer",
               "surgeon", "cartographer", "botanist", "linguist", "sculptor"]


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(_syllable(rng) for _ in range(rng.randint(lo, hi))).capitalize()


@dataclass
class World:
    """Entities by name, with their facts; ``docs[i] = (title, text)``."""

    countries: dict[str, dict[str, Any]] = field(default_factory=dict)
    cities: dict[str, dict[str, Any]] = field(default_factory=dict)
    people: dict[str, dict[str, Any]] = field(default_factory=dict)
    companies: dict[str, dict[str, Any]] = field(default_factory=dict)
    docs: list[tuple[str, str]] = field(default_factory=list)
    doc_of: dict[str, int] = field(default_factory=dict)  # entity name -> its document

    def kind(self, name: str) -> str:
        for kind in ("countries", "cities", "people", "companies"):
            if name in getattr(self, kind):
                return kind
        raise KeyError(f"no entity named {name!r}")


@lru_cache(maxsize=4)
def make_world(seed: int = 0, countries: int = 30, cities_per_country: int = 5,
               people: int = 600, companies: int = 250) -> World:
    """The world of ``seed`` (module docstring). Cached: it is read-only after construction."""
    if companies > people:
        raise ValueError(f"every company needs its own founder: companies={companies} > "
                         f"people={people}")
    rng = random.Random(f"search-world/{seed}")
    used: set[str] = set()  # every word of every name so far (shared words excepted)

    def fresh(make: Any, shared: frozenset[str] = frozenset()) -> str:
        for _ in range(1000):
            name = str(make())
            words = [x for x in name.split() if x not in shared]
            if not any(x in used or x.lower() in _STOP for x in words):
                used.update(words)  # no word names two entities: a name finds its own page
                return name
        raise RuntimeError("could not draw a fresh name")

    w = World()
    for _ in range(countries):
        k = fresh(lambda: _word(rng, 1, 2) + rng.choice(_COUNTRY_ENDS))
        w.countries[k] = {"currency": fresh(lambda: _word(rng, 1, 2).lower()), "cities": []}
    for k in w.countries:
        for _ in range(cities_per_country):
            t = fresh(lambda: _word(rng, 1, 2) + rng.choice(_CITY_ENDS))
            w.cities[t] = {"country": k, "river": fresh(lambda: _word(rng, 2, 2))}
            w.countries[k]["cities"].append(t)
        w.countries[k]["capital"] = rng.choice(w.countries[k]["cities"])
    city_names = sorted(w.cities)
    firsts = sorted({fresh(lambda: _word(rng, 1, 2)) for _ in range(60)})
    shared_first = frozenset(firsts)  # first names repeat; surnames do not
    for _ in range(people):
        p = fresh(lambda: f"{rng.choice(firsts)} {_word(rng, 2, 3)}", shared_first)
        w.people[p] = {"city": rng.choice(city_names), "year": rng.randint(1820, 1990),
                       "profession": rng.choice(PROFESSIONS), "company": None}
    founders = rng.sample(sorted(w.people), companies)
    for founder in founders:
        c = fresh(lambda: f"{_word(rng, 2, 2)} {rng.choice(_COMPANY_ENDS)}", _SUFFIXES)
        born = w.people[founder]["year"]
        w.companies[c] = {"founder": founder, "hq": rng.choice(city_names),
                          "year": rng.randint(born + 20, born + 60),
                          "industry": rng.choice(_INDUSTRIES)}
        w.people[founder]["company"] = c
    _write_docs(w)
    return w


_SUFFIXES = frozenset(_COMPANY_ENDS)
_STOP = {"the", "a", "an", "in", "of", "is", "it", "by", "to", "and", "or", "as", "at", "on",
         "be", "was", "for", "its", "are", "this", "he", "she", "no", "so", "do", "up", "we"}


def _write_docs(w: World) -> None:
    def add(title: str, text: str) -> None:
        w.doc_of[title] = len(w.docs)
        w.docs.append((title, text))

    for k, f in w.countries.items():
        # (no list of its cities: "which country is X in" must need X's own page)
        add(k, f"{k} is a country. Its currency is the {f['currency']}, and its capital is "
               f"{f['capital']}.")
    for t, f in w.cities.items():
        capital = (" It is the capital of the country."
                   if w.countries[f["country"]]["capital"] == t else "")
        add(t, f"{t} is a city in the country of {f['country']}. The {f['river']} river flows "
               f"through {t}.{capital}")
    for p, f in w.people.items():
        article = "an" if f["profession"][0] in "aeiou" else "a"
        text = (f"{p} is {article} {f['profession']}, born in {f['year']} in the city of "
                f"{f['city']}.")
        if f["company"]:
            text += f" {p} founded {f['company']}."
        add(p, text)
    for c, f in w.companies.items():
        add(c, f"{c} is a {f['industry']} company founded in {f['year']} by {f['founder']}. "
               f"Its headquarters are in {f['hq']}.")


# ---------------------------------------------------------------------------------------------
# Questions: a start entity and a path of relations. Each relation reads the page of the entity
# it starts from and names the next entity (or the final value).

RELATIONS: dict[str, tuple[str, str, str]] = {
    # name: (subject kind, attribute in that entity's facts, search keyword for the demonstration)
    "birth_city": ("people", "city", "born"),
    "birth_year": ("people", "year", "born"),
    "company": ("people", "company", "founded"),
    "founder": ("companies", "founder", "founded"),
    "hq": ("companies", "hq", "headquarters"),
    "company_year": ("companies", "year", "founded"),
    "country": ("cities", "country", "country"),
    "currency": ("countries", "currency", "currency"),
    "capital": ("countries", "capital", "capital"),
}

# type name -> (path of relations, question template over the start entity {x})
QUESTION_TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "birth_city": (("birth_city",), "In which city was {x} born?"),
    "birth_year": (("birth_year",), "In what year was {x} born?"),
    "company_year": (("company_year",), "In what year was {x} founded?"),
    "founder": (("founder",), "Who founded {x}?"),
    "city_country": (("country",), "In which country is the city of {x}?"),
    "currency": (("currency",), "What is the currency of {x}?"),
    "birth_country": (("birth_city", "country"), "In which country was {x} born?"),
    "company_hq": (("company", "hq"),
                   "In which city is the company founded by {x} headquartered?"),
    "founder_city": (("founder", "birth_city"), "In which city was the founder of {x} born?"),
    "founder_year": (("founder", "birth_year"), "In what year was the founder of {x} born?"),
    "capital_of_city": (("country", "capital"),
                        "What is the capital of the country that {x} is in?"),
    "birth_currency": (("birth_city", "country", "currency"),
                       "What is the currency of the country where {x} was born?"),
    "founder_country": (("founder", "birth_city", "country"),
                        "In which country was the founder of {x} born?"),
    "company_country": (("company", "hq", "country"),
                        "In which country is the company founded by {x} headquartered?"),
}


def hops(qtype: str) -> int:
    return len(QUESTION_TYPES[qtype][0])


def walk(w: World, start: str, path: tuple[str, ...]) -> list[str]:
    """The entities visited from ``start`` along ``path``, then the answer (as text)."""
    chain = [start]
    for rel in path:
        kind, attr, _ = RELATIONS[rel]
        facts = getattr(w, kind)[chain[-1]]
        chain.append(str(facts[attr]))
    return chain


def shortcut(w: World, chain: list[str]) -> bool:
    """Whether the answer already stands on a page before the last hop's (e.g. the company's
    headquarters is also its founder's birth city): such a question needs fewer searches than
    its hops, so the task maker skips it."""
    return any(chain[-1] in w.docs[w.doc_of[e]][1] for e in chain[:-2])


def starts(w: World, qtype: str) -> list[str]:
    """The entities a question of ``qtype`` can start from (every path step defined)."""
    path = QUESTION_TYPES[qtype][0]
    kind = RELATIONS[path[0]][0]
    names = sorted(getattr(w, kind))
    if path[0] == "company":
        names = [p for p in names if w.people[p]["company"]]
    return names
