"""raychat's long-lived Ray actors and the pure logic they are built from.

Actor logic lives in plain classes (unit-tested without Ray); `actors.factory`
applies the `ray.remote` options in one place.
"""
