"""Generated SQLite databases and text-to-SQL questions for ``env=sql``.

Two domains, each a fixed schema filled from ``random.Random(f"sql-db/{domain}/{db_seed}")``:

- ``shop``: customers (30), products (25, distinct prices), orders (120);
- ``school``: students (40), courses (20), enrollments (~120, with grades).

A question template is ``(text, reference SQL, ordered)`` over values drawn from that database
(a city that occurs, a customer who exists...). ``ordered`` is True exactly when the question asks
for an order ("from the most expensive down", "in alphabetical order"); the reference then has an
ORDER BY that leaves no ties. ``make_question`` rejects draws whose reference result is empty or
ambiguous (a tie for "the most"), so every question has one well-defined answer on its database.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

DOMAINS = ("shop", "school")

_FIRST = ["Ana", "Ben", "Carla", "Dev", "Elif", "Femi", "Goran", "Hana", "Ivan", "Jonas", "Kira",
          "Luis", "Maya", "Nils", "Olga", "Pavel", "Rosa", "Sven", "Tariq", "Uma", "Vera", "Wei",
          "Yara", "Zane"]
_LAST = ["Abbott", "Bauer", "Costa", "Dietz", "Eriksen", "Fischer", "Garcia", "Haddad", "Ivanova",
         "Jensen", "Kowalski", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrov", "Quinn",
         "Rossi", "Sato", "Tanaka", "Urban", "Varga", "Weber", "Young"]
_CITIES = ["Lisbon", "Oslo", "Porto", "Krakow", "Ghent", "Turin", "Bergen", "Lyon"]
_CATEGORIES = {"kitchen": ["Kettle", "Pan", "Whisk", "Grater", "Teapot"],
               "garden": ["Rake", "Hose", "Shovel", "Planter", "Trowel"],
               "office": ["Stapler", "Lamp", "Binder", "Desk Mat", "Pen Set"],
               "toys": ["Kite", "Puzzle", "Yo-yo", "Robot", "Blocks"],
               "sports": ["Racket", "Ball", "Helmet", "Jump Rope", "Mat"]}
_ADJ = ["Blue", "Red", "Compact", "Deluxe", "Classic", "Green", "Mini", "Pro"]
_MAJORS = ["Biology", "History", "Physics", "Economics", "Music", "Chemistry"]
_DEPTS = {"Mathematics": ["Calculus", "Linear Algebra", "Statistics", "Number Theory"],
          "Computing": ["Databases", "Algorithms", "Networks", "Compilers"],
          "Languages": ["Spanish", "Latin", "Japanese", "Arabic"],
          "Arts": ["Drawing", "Film Studies", "Sculpture", "Art History"],
          "Science": ["Genetics", "Optics", "Ecology", "Geology"]}

SCHEMAS = {
    "shop": """CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL, joined_year INTEGER NOT NULL);
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL, price REAL NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id), product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL, order_year INTEGER NOT NULL);""",  # noqa: E501
    "school": """CREATE TABLE students (id INTEGER PRIMARY KEY, name TEXT NOT NULL, major TEXT NOT NULL, year INTEGER NOT NULL);
CREATE TABLE courses (id INTEGER PRIMARY KEY, title TEXT NOT NULL, department TEXT NOT NULL, credits INTEGER NOT NULL);
CREATE TABLE enrollments (student_id INTEGER NOT NULL REFERENCES students(id), course_id INTEGER NOT NULL REFERENCES courses(id), grade INTEGER NOT NULL, PRIMARY KEY (student_id, course_id));""",  # noqa: E501
}


def _names(rng: random.Random, n: int) -> list[str]:
    pool = [f"{f} {g}" for f in _FIRST for g in _LAST]
    return rng.sample(pool, n)


def _fill_shop(conn: sqlite3.Connection, rng: random.Random) -> None:
    for i, name in enumerate(_names(rng, 30), 1):
        conn.execute("INSERT INTO customers VALUES (?, ?, ?, ?)",
                     (i, name, rng.choice(_CITIES), rng.randint(2015, 2024)))
    products = [(c, f"{a} {n}") for c, ns in _CATEGORIES.items() for n in ns for a in _ADJ]
    prices = rng.sample(range(199, 19999), 25)  # cents, distinct: no ties in price order
    for i, ((cat, name), cents) in enumerate(zip(rng.sample(products, 25), prices), 1):
        conn.execute("INSERT INTO products VALUES (?, ?, ?, ?)", (i, name, cat, cents / 100))
    for i in range(1, 121):
        conn.execute("INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
                     (i, rng.randint(1, 30), rng.randint(1, 22), rng.randint(1, 5),
                      rng.randint(2019, 2024)))  # products 23-25 are never ordered


def _fill_school(conn: sqlite3.Connection, rng: random.Random) -> None:
    for i, name in enumerate(_names(rng, 40), 1):
        conn.execute("INSERT INTO students VALUES (?, ?, ?, ?)",
                     (i, name, rng.choice(_MAJORS), rng.randint(1, 4)))
    titles = [(d, t) for d, ts in _DEPTS.items() for t in ts]
    for i, (dept, title) in enumerate(titles, 1):
        conn.execute("INSERT INTO courses VALUES (?, ?, ?, ?)",
                     (i, title, dept, rng.choice([2, 3, 4, 5])))
    pairs = rng.sample([(s, c) for s in range(1, 41) for c in range(1, 18)], 120)  # 18-20: none
    for s, c in pairs:
        conn.execute("INSERT INTO enrollments VALUES (?, ?, ?)", (s, c, rng.randint(40, 100)))


_FILL: dict[str, Callable[[sqlite3.Connection, random.Random], None]] = {
    "shop": _fill_shop, "school": _fill_school}


def build_database(domain: str, db_seed: int, path: str | Path) -> Path:
    """Write the database ``(domain, db_seed)`` to ``path`` (a new file) and return it."""
    if domain not in SCHEMAS:
        raise KeyError(f"unknown sql domain {domain!r}; valid: {sorted(SCHEMAS)}")
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists")
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMAS[domain])
        _FILL[domain](conn, random.Random(f"sql-db/{domain}/{db_seed}"))
        conn.commit()
    finally:
        conn.close()
    return path


# ---------------------------------------------------------------------------------------------
# Questions: (rng, conn) -> (text, sql, ordered); values are drawn from the database itself.

Question = tuple[str, str, bool]


def _pick(conn: sqlite3.Connection, rng: random.Random, sql: str) -> Any:
    return rng.choice([r[0] for r in conn.execute(sql).fetchall()])


def _q(s: str) -> str:
    return s.replace("'", "''")


def _shop_questions() -> list[Callable[[random.Random, sqlite3.Connection], Question]]:
    def count_city(rng, conn):
        c = rng.choice(_CITIES)
        return (f"How many customers live in {c}?",
                f"SELECT COUNT(*) FROM customers WHERE city = '{c}'", False)

    def names_category(rng, conn):
        c = _pick(conn, rng, "SELECT DISTINCT category FROM products")
        return (f"List the names of all products in the {c} category.",
                f"SELECT name FROM products WHERE category = '{c}'", False)

    def top_price(rng, conn):
        k = rng.randint(2, 5)
        return (f"What are the names of the {k} most expensive products, from the most "
                "expensive down?", f"SELECT name FROM products ORDER BY price DESC LIMIT {k}", True)

    def units(rng, conn):
        n = _pick(conn, rng, "SELECT name FROM customers WHERE id IN (SELECT customer_id FROM "
                             "orders)")
        return (f"How many units in total has {n} ordered?",
                "SELECT SUM(o.quantity) FROM orders o JOIN customers c ON o.customer_id = c.id "
                f"WHERE c.name = '{_q(n)}'", False)

    def spend(rng, conn):
        n = _pick(conn, rng, "SELECT name FROM customers WHERE id IN (SELECT customer_id FROM "
                             "orders)")
        return (f"How much has {n} spent in total (price times quantity over all their orders)?",
                "SELECT SUM(p.price * o.quantity) FROM orders o JOIN customers c ON "
                "o.customer_id = c.id JOIN products p ON o.product_id = p.id "
                f"WHERE c.name = '{_q(n)}'", False)

    def per_city(rng, conn):
        return ("For each city, how many customers live there? Give the city and the count.",
                "SELECT city, COUNT(*) FROM customers GROUP BY city", False)

    def avg_price(rng, conn):
        c = _pick(conn, rng, "SELECT DISTINCT category FROM products")
        return (f"What is the average price of the products in the {c} category?",
                f"SELECT AVG(price) FROM products WHERE category = '{c}'", False)

    def never_ordered(rng, conn):
        return ("Which products have never been ordered? List their names.",
                "SELECT name FROM products WHERE id NOT IN (SELECT product_id FROM orders)", False)

    def buyers_in_year(rng, conn):
        y = rng.randint(2019, 2024)
        return (f"List the names of the customers who placed an order in {y}, in alphabetical "
                "order, each once.",
                "SELECT DISTINCT c.name FROM customers c JOIN orders o ON o.customer_id = c.id "
                f"WHERE o.order_year = {y} ORDER BY c.name", True)

    def most_orders(rng, conn):
        return ("Which customer placed the most orders? Give the name.",
                "SELECT c.name FROM customers c JOIN orders o ON o.customer_id = c.id "
                "GROUP BY c.id ORDER BY COUNT(*) DESC LIMIT 1", False)

    return [count_city, names_category, top_price, units, spend, per_city, avg_price,
            never_ordered, buyers_in_year, most_orders]


def _school_questions() -> list[Callable[[random.Random, sqlite3.Connection], Question]]:
    def count_major(rng, conn):
        m = rng.choice(_MAJORS)
        return (f"How many students major in {m}?",
                f"SELECT COUNT(*) FROM students WHERE major = '{m}'", False)

    def dept_titles(rng, conn):
        d = rng.choice(sorted(_DEPTS))
        return (f"List the titles of the courses offered by the {d} department.",
                f"SELECT title FROM courses WHERE department = '{d}'", False)

    def avg_grade(rng, conn):
        t = _pick(conn, rng, "SELECT title FROM courses WHERE id IN (SELECT course_id FROM "
                             "enrollments)")
        return (f"What is the average grade in {t}?",
                "SELECT AVG(e.grade) FROM enrollments e JOIN courses c ON e.course_id = c.id "
                f"WHERE c.title = '{_q(t)}'", False)

    def student_courses(rng, conn):
        n = _pick(conn, rng, "SELECT name FROM students WHERE id IN (SELECT student_id FROM "
                             "enrollments)")
        return (f"Which courses is {n} enrolled in? List the course titles.",
                "SELECT c.title FROM courses c JOIN enrollments e ON e.course_id = c.id JOIN "
                f"students s ON e.student_id = s.id WHERE s.name = '{_q(n)}'", False)

    def top_students(rng, conn):
        k = rng.randint(2, 4)
        return (f"List the names of the {k} students with the highest average grade, highest "
                "first.",
                "SELECT s.name FROM students s JOIN enrollments e ON e.student_id = s.id "
                f"GROUP BY s.id ORDER BY AVG(e.grade) DESC LIMIT {k}", True)

    def credits(rng, conn):
        n = _pick(conn, rng, "SELECT name FROM students WHERE id IN (SELECT student_id FROM "
                             "enrollments)")
        return (f"How many credits is {n} taking in total?",
                "SELECT SUM(c.credits) FROM courses c JOIN enrollments e ON e.course_id = c.id "
                f"JOIN students s ON e.student_id = s.id WHERE s.name = '{_q(n)}'", False)

    def per_dept(rng, conn):
        return ("For each department, how many courses does it offer? Give the department and "
                "the count.", "SELECT department, COUNT(*) FROM courses GROUP BY department",
                False)

    def empty_courses(rng, conn):
        return ("Which courses have no students enrolled? List their titles.",
                "SELECT title FROM courses WHERE id NOT IN (SELECT course_id FROM enrollments)",
                False)

    def year_major(rng, conn):
        y, m = rng.randint(1, 4), rng.choice(_MAJORS)
        return (f"List the names of the year-{y} students majoring in {m}, in alphabetical order.",
                f"SELECT name FROM students WHERE year = {y} AND major = '{m}' ORDER BY name",
                True)

    return [count_major, dept_titles, avg_grade, student_courses, top_students, credits,
            per_dept, empty_courses, year_major]


QUESTIONS = {"shop": _shop_questions(), "school": _school_questions()}


def _ambiguous(conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> bool:
    """A LIMIT query whose cut-off is a tie (the next row sorts equal) has no single answer."""
    if " LIMIT " not in sql:
        return False
    head, k = sql.rsplit(" LIMIT ", 1)
    order_by = head.rsplit(" ORDER BY ", 1)[1].replace(" DESC", "").replace(" ASC", "")
    keyed = conn.execute(head.replace("SELECT ", f"SELECT {order_by}, ", 1) + f" LIMIT "
                         f"{int(k) + 1}").fetchall()
    return len(keyed) > int(k) and keyed[int(k) - 1][0] == keyed[int(k)][0]


def make_question(domain: str, conn: sqlite3.Connection,
                  rng: random.Random) -> tuple[str, str, bool, list[tuple[Any, ...]]] | None:
    """One question on ``conn``'s database: ``(text, sql, ordered, reference rows)``, or None
    when the draw has an empty or ambiguous answer."""
    text, sql, ordered = rng.choice(QUESTIONS[domain])(rng, conn)
    rows = conn.execute(sql).fetchall()
    if not rows or all(v is None for r in rows for v in r) or _ambiguous(conn, sql, rows):
        return None
    return text, sql, ordered, rows
