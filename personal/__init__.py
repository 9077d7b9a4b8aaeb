"""Personalisation: buyers' interaction history (events, users) in the catalogue database, its import and
export, and a seeded user simulator that writes realistic event logs (docs/personalisation.md)."""
