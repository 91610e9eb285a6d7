"""The scenario library: scenario files only (see harness for how they run)."""
