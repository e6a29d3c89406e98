"""Semantic checks of the Task API examples, named in job.toml (`[validate] checks`).

The prompt tells the model that today is the job's reference date (Wednesday, 2025-01-15): a due date the
assistant names must be a real date, and a relative one must agree with that day.
"""

import datetime as dt
import re

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
# A date the assistant writes, with the relative day it names in brackets, if any: "2025-01-16 (tomorrow)".
DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b(?:\s*\((next\s+)?([A-Za-z]+)\))?")


def due_dates(example):
    """A reason when an assistant turn names an impossible date, or a relative day that the date does not match;
    None when every date agrees with the reference date."""
    today = example.reference_date
    for text in example.assistant_texts:
        for found in DATE.finditer(text):
            year, month, day, following, relative = found.groups()
            try:
                date = dt.date(int(year), int(month), int(day))
            except ValueError:
                return f"{found.group(0)} is not a date"
            if today is None or relative is None:
                continue
            word = relative.lower()
            if word == "tomorrow" and not following:
                wanted = today + dt.timedelta(days=1)
                if date != wanted:
                    return f"{found.group(0)}: tomorrow is {wanted.isoformat()}"
            elif word == "today" and not following:
                if date != today:
                    return f"{found.group(0)}: today is {today.isoformat()}"
            elif word.capitalize() in WEEKDAYS:
                name = word.capitalize()
                if WEEKDAYS[date.weekday()] != name:
                    return f"{found.group(0)} is a {WEEKDAYS[date.weekday()]}, not a {name}"
                ahead = (date - today).days
                if not 0 <= ahead <= (14 if following else 7):
                    coming = today + dt.timedelta(days=(WEEKDAYS.index(name) - today.weekday()) % 7)
                    return f"{found.group(0)}: the coming {name} after {today} is {coming.isoformat()}"
    return None
