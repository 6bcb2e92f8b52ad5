from magsd_timm.tables import markdown_table


def test_a_table_is_its_header_then_one_line_per_row():
    assert markdown_table(['a', 'b'], [[1, 'x'], [2, 'y']]) == '| a | b |\n|---|---|\n| 1 | x |\n| 2 | y |'


def test_a_cell_of_user_text_cannot_break_the_table():
    table = markdown_table(['source', 'images'], [['CXR | site\nB', 3]])
    assert table.splitlines()[-1] == '| CXR \\| site B | 3 |'
