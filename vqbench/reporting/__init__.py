"""From stored rows to tables: floors derived from each row's counts and ceilings, and the typed tables.
"""
