"""Wording pools for request-side variation: openers, context qualifiers and closers, and the openers and closers
of each phrasing style a prompt can ask for (formal, casual, imperative, question)."""

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

# Openers and closers per phrasing style. A question opener makes the request end with "?"; a request that is a
# question already keeps its own words (see `synth.Variation.request`).
STYLE_OPENERS: dict[str, tuple[Opener, ...]] = {
    "formal": (Opener("Please "), Opener("Kindly "), Opener("I would like you to "), Opener("Please be so kind as to "),
               Opener("I would appreciate it if you could "), Opener("Good morning. Please ")),
    "casual": (Opener("Hey, "), Opener("Hi! "), Opener("So, "), Opener("Okay, "), Opener("Real quick, "),
               Opener("Quick one: "), Opener("Yo, "), Opener("")),
    "imperative": (Opener(""), Opener(""), Opener(""), Opener("Now "), Opener("Go ahead and ")),
    "question": (Opener("Could you ", True), Opener("Can you ", True), Opener("Would you please ", True),
                 Opener("Could you please ", True), Opener("Would you ", True), Opener("Can you please ", True)),
}
STYLE_CLOSERS: dict[str, tuple[str, ...]] = {
    "formal": ("", ", thank you", ". Thank you in advance", " at your earliest convenience", ", if you would"),
    "casual": ("", ", thanks", " asap", ", cheers", ", ok", " pls", " lol", ", ty"),
    "imperative": ("", "", " now", " right away", " today"),
    "question": ("", "", " for me", " today", " when you have a moment"),
}
STYLES = tuple(STYLE_OPENERS)

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
