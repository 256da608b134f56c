"""``schema``: the one record schema, each field named once."""

from __future__ import annotations


def test_record_and_row_schemas_name_each_field_once():
    from c2f_search.schema import RECORD_FIELDS, ROW_FIELDS

    for fields in (RECORD_FIELDS, ROW_FIELDS):
        assert len(set(fields)) == len(fields), [f for f in fields if fields.count(f) > 1]
