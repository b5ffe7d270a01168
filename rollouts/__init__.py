"""Closed-loop evaluation of planning policies: metrics over all start cells, episodes, rendering."""
