"""Wording pools for request-side variation: openers, context qualifiers and closers."""

from __future__ import annotations

from typing import NamedTuple


class Opener(NamedTuple):
    text: str
    question: bool = False


OPENERS: tuple[Opener, ...] = (
    Opener(""), Opener(""), Opener(""), Opener("Please "), Opener("Hey, "), Opener("Hi! "), Opener("Quick one: "),
    Opener("Could you ", True), Opener("Can you ", True), Opener("Would you mind if we ", True),
    Opener("I'd like you to "), Opener("Okay, "), Opener("So, "), Opener("When you get a chance, "),
    Opener("Urgent: "), Opener("FYI - "), Opener("Hello there. "), Opener("Alright, "), Opener("One more thing: "),
    Opener("If possible, "), Opener("Good morning! "), Opener("Heads up: "), Opener("Note to self: "),
    Opener("Before I forget, "), Opener("Real quick, "), Opener("Hmm, "), Opener("Just checking in. "),
)

CLOSERS: tuple[str, ...] = (
    "", "", "", " please", ", thanks", " - thank you", ", if you can", " asap", " when you have a moment",
    ", cheers", ", much appreciated", " (thanks in advance)", " right away", ", no rush", " today if possible",
    " for me", ", ok", " - appreciate it",
)

QUALIFIERS: tuple[str, ...] = (
    " for the {team} team", " for {project}", " before the {event}", " - it's for {person}",
    " related to {project}", " (the {team} team asked)", " so {person} can follow up", " ahead of the {event}",
    " as discussed with {person}", " for the {event}",
)

_POOLS: dict[str, tuple[str, ...]] = {
    "team": ("marketing", "design", "finance", "QA", "sales", "ops", "legal", "platform", "support", "data",
             "mobile", "security", "HR", "research", "growth", "infra"),
    "project": ("Project Atlas", "the Q3 launch", "the website redesign", "the onboarding revamp",
                "the billing migration", "the mobile app", "the annual report", "the offsite", "Project Nova",
                "the customer portal", "the audit", "the hiring push", "the API v2 rollout", "the rebrand"),
    "event": ("board meeting", "sprint review", "client demo", "all-hands", "product launch", "team retro",
              "quarterly review", "budget deadline", "conference", "release freeze", "holiday break",
              "investor call"),
    "person": ("Sam", "Priya", "Alex", "Jordan", "Maria", "Chen", "Fatima", "Luca", "Aisha", "Tom", "Keiko",
               "Diego", "Nora", "Ben", "Olivia", "Ravi"),
}


def fill_qualifier(template: str, bits: int) -> str:
    """A qualifier template with its placeholder filled from its pool, chosen by the random `bits`."""
    name = template[template.index("{") + 1:template.index("}")]
    pool = _POOLS[name]
    return template.replace("{" + name + "}", pool[bits % len(pool)])
