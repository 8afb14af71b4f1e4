"""One pool of Ray actors for sampling and evaluation.

Tasks come in groups (one group per kind of actor: the reference sampler, or one evaluator per
policy). At most `size` actors live at once; a group's actors are freed as soon as its last task
finishes, so the next group's start. An actor that dies mid-task (its process, or its whole node)
is replaced and its task redone by whichever actor of its group is free first, up to `attempts`
times. Tasks go only to actors that have started: a replacement that finds no room (its node gone,
the cluster full) never holds work back, so the run completes on the actors left. An actor that
fails to start, or a task that raises a vbon error, stops the pool with one line.
"""

from __future__ import annotations

import uuid
from collections import Counter, deque
from collections.abc import Callable, Hashable
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from vbon.errors import VbonError
from vbon.ray_runtime import error_line, vbon_cause

Task = tuple[Hashable, tuple]  # (group, arguments of the actor's `run`)


class ActorPool:
    """`factory(group, name)` starts an actor for `group` under the Ray actor name `name`
    (vbon-WHAT-RUN-K, so tests and operators can find them)."""

    def __init__(
        self, factory: Callable[[Hashable, str], Any], size: int, what: str, attempts: int = 3
    ) -> None:
        self.factory, self.size, self.what, self.attempts = factory, max(1, size), what, attempts
        self._tag, self._count = uuid.uuid4().hex[:8], 0

    def _start(self, group: Hashable):
        self._count += 1
        return self.factory(group, f"vbon-{self.what}-{self._tag}-{self._count}")

    def run(
        self,
        tasks: list[Task],
        on_done: Callable[[int, Any], None],
        label: Callable[[int], str] | None = None,
    ) -> None:
        """Run every task (`actor.run.remote(*args)` on an actor of its group); `on_done(i,
        result)` as each finishes, in completion order. `label(i)` names a task in errors."""
        label = label or (lambda i: f"{self.what} task {i}")
        todo = deque(range(len(tasks)))
        left = {g: sum(1 for t in tasks if t[0] == g) for g, _ in tasks}
        idle: dict[Hashable, list] = {g: [] for g in left}
        starting: dict[ray.ObjectRef, tuple[Any, Hashable]] = {}  # readiness of new actors
        running: dict[ray.ObjectRef, tuple[Any, int]] = {}
        alive, failures = 0, dict.fromkeys(range(len(tasks)), 0)
        try:
            while todo or running:
                # each waiting task takes a free actor, else one still starting, else a new one
                unclaimed = Counter(g for _, g in starting.values())
                for i in list(todo):
                    group = tasks[i][0]
                    if idle[group]:
                        todo.remove(i)
                        actor = idle[group].pop()
                        running[actor.run.remote(*tasks[i][1])] = (actor, i)
                    elif unclaimed[group]:
                        unclaimed[group] -= 1
                    elif alive < self.size:
                        actor = self._start(group)
                        starting[actor.__ray_ready__.remote()] = (actor, group)
                        alive += 1
                [ref], _ = ray.wait([*running, *starting], num_returns=1)
                if ref in starting:
                    actor, group = starting.pop(ref)
                    try:
                        ray.get(ref)
                        idle[group].append(actor)
                    except RayActorError as exc:
                        if exc.actor_init_failed:
                            raise VbonError(
                                f"{self.what} actor failed to start: {error_line(exc)}"
                            ) from None
                        alive -= 1  # its node went away before it started
                    continue
                actor, i = running.pop(ref)
                group = tasks[i][0]
                try:
                    result = ray.get(ref)
                except RayActorError:
                    failures[i] += 1
                    if failures[i] >= self.attempts:
                        raise VbonError(
                            f"{label(i)} lost its actor {failures[i]} times; check the actors' "
                            "memory (resources.cpus_per_actor), the nodes and the Ray logs"
                        ) from None
                    alive -= 1
                    todo.appendleft(i)
                    continue
                except RayTaskError as exc:
                    kind = type(vbon_cause(exc) or VbonError(""))  # keep the error's own class
                    raise kind(f"{label(i)}: {error_line(exc)}") from None
                on_done(i, result)
                left[group] -= 1
                if left[group]:
                    idle[group].append(actor)
                else:  # free its CPUs for the groups still waiting for an actor
                    doomed = [r for r, (_, g) in starting.items() if g == group]
                    for a in [actor, *idle.pop(group), *(starting.pop(r)[0] for r in doomed)]:
                        ray.kill(a)
                        alive -= 1
                    idle[group] = []
        finally:
            for actor, _ in [*running.values(), *starting.values()]:
                ray.kill(actor)
            for actors in idle.values():
                for a in actors:
                    ray.kill(a)
