"""The figures a run and a report write: what a reader can see in them."""
import matplotlib.axes

from magsd_timm.evaluation.plots import plot_confusion_matrix


def test_confusion_matrix_counts_are_white_on_dark_cells_and_black_on_light_ones(tmp_path, monkeypatch):
    written = {}
    text = matplotlib.axes.Axes.text

    def recording(self, x, y, s, *args, **kwargs):
        written[s] = kwargs.get('color')
        return text(self, x, y, s, *args, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, 'text', recording)
    plot_confusion_matrix([[90, 3], [12, 41]], ['a', 'b'], tmp_path / 'cm.png')
    assert written == {'90': 'white', '3': 'black', '12': 'black', '41': 'black'}
    assert (tmp_path / 'cm.png').stat().st_size > 0
