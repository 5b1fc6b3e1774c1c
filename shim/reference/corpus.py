"""The reference corpus: 200 staffing-domain workers, searched by exact cosine with numpy.

Also the Go gateway's learning loop (matrix search + playbooks): a recorded playbook with
score s scales that worker's distance for searches of the same role by (1 - 0.5 s); other
roles are untouched. The index is built once; playbooks are per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shim.reference.embedding import unit_embedding

INDEX_NAME = "workers"
INDEX_MODEL = "nomic-embed-text"
ROLES = (
    "Forklift Operator",
    "CNC Operator",
    "Warehouse Associate",
    "Shipping Clerk",
    "Quality Inspector",
    "Maintenance Technician",
    "Welder",
    "Machine Operator",
)
SHIFTS = ("day", "night", "swing", "weekend")
CITIES = ("Columbus", "Dayton", "Toledo", "Akron", "Cincinnati")
FIRST = ("Ana", "Ben", "Chloe", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo")
LAST = ("Reyes", "Kim", "Novak", "Okafor", "Patel", "Quinn", "Silva", "Tran")


@dataclass(frozen=True, slots=True)
class Worker:
    id: str
    name: str
    role: str
    years: int
    shift: str
    city: str
    rate: float

    @property
    def text(self) -> str:
        return (
            f"{self.role} {self.name}, {self.years} years experience, {self.shift} shift, "
            f"{self.city}"
        )


def make_workers(count: int = 200) -> list[Worker]:
    """The same `count` workers every time (no randomness)."""
    return [
        Worker(
            id=f"w-{i:03d}",
            name=f"{FIRST[i % len(FIRST)]} {LAST[(i // len(FIRST)) % len(LAST)]}",
            role=ROLES[i % len(ROLES)],
            years=1 + (i * 7) % 23,
            shift=SHIFTS[(i // len(ROLES)) % len(SHIFTS)],
            city=CITIES[(i // 3) % len(CITIES)],
            rate=round(16.0 + (i * 37 % 140) / 10, 2),
        )
        for i in range(count)
    ]


@dataclass(frozen=True, slots=True)
class Hit:
    worker: Worker
    similarity: float


@dataclass
class Corpus:
    """Workers, their unit embedding matrix, and the playbooks recorded so far."""

    workers: list[Worker] = field(default_factory=make_workers)
    playbooks: dict[tuple[str, str], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.matrix = np.array([unit_embedding(w.text, INDEX_MODEL) for w in self.workers])
        self.by_id = {w.id: w for w in self.workers}

    def search(self, vector: np.ndarray, k: int, *, role: str | None = None) -> list[Hit]:
        """The k most cosine-similar workers (ties broken by id), optionally of one role."""
        norm = np.linalg.norm(vector)
        similarities = self.matrix @ (vector / norm) if norm else np.zeros(len(self.workers))
        candidates = [i for i, w in enumerate(self.workers) if role is None or w.role == role]
        order = sorted(candidates, key=lambda i: (-similarities[i], self.workers[i].id))
        return [Hit(self.workers[i], float(similarities[i])) for i in order[:k]]

    def query(self, text: str, k: int, *, role: str | None = None) -> list[Hit]:
        return self.search(unit_embedding(text, INDEX_MODEL), k, role=role)

    def record_playbook(self, worker_id: str, role: str, score: float) -> None:
        self.playbooks[(worker_id, role)] = score

    def boosted_distance(self, hit: Hit, role: str | None) -> float:
        """1 - cosine, scaled by (1 - 0.5 s) when a playbook for this worker and role exists."""
        distance = 1.0 - hit.similarity
        score = self.playbooks.get((hit.worker.id, role or hit.worker.role))
        return distance * (1.0 - 0.5 * score) if score is not None else distance
