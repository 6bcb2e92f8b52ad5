from magsd_timm.utils.tables import markdown_table


def test_a_table_is_its_header_then_one_line_per_row():
    assert markdown_table(['a', 'b'], [[1, 'x'], [2, 'y']]) == '| a | b |\n|---|---|\n| 1 | x |\n| 2 | y |'


def test_a_cell_of_user_text_cannot_break_the_table():
    table = markdown_table(['source', 'images'], [['CXR | site\nB', 3]])
    assert table.splitlines()[-1] == '| CXR \\| site B | 3 |'


def test_a_published_table_shows_no_folder_of_the_machine(tmp_path, monkeypatch):
    from magsd_timm.utils.tables import shown_command, shown_path

    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / 'out' / 'cxr') == 'out/cxr'  # inside the working folder: relative
    assert shown_path('/elsewhere/data/lung_boxes.json') == 'lung_boxes.json'  # outside: the name alone
    assert shown_path('out/cxr') == 'out/cxr' and shown_path('hf-hub:org/data') == 'hf-hub:org/data'
    assert shown_command(f'train.py --data /srv/x/cxr --output {tmp_path}/runs/a --lr 1e-3') == \
        'train.py --data cxr --output runs/a --lr 1e-3'
