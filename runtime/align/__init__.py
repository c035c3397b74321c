"""Online alignment of the drafter to the target from verification feedback (issue 7, in progress)."""
