"""Data efficiency: both models trained on a few images per class, to see which one needs less data."""
import streamlit as st

from app_pages.common import current_handle, current_source, describe_handle, describe_source, public_text, show_error
from core.present.charts import data_efficiency_chart
from core.settings.config import ARTICLE_EPOCHS, DataConfig, ModelKind
from core.settings.presets import active_preset, capped_batch_size
from core.settings.text import percent

RESULT_KEY = "eff_result"  # (settings, EfficiencyResult) of this session's last measurement

st.title("Data efficiency")
st.caption("How many images does each model need? Both are trained at each count of training images per class "
           "(the baseline CNN from scratch, the transfer model's Dense layer on the frozen backbone) and scored "
           "on the whole validation split. The backbone's features are computed once, so the transfer side is "
           "cheap; the baseline is retrained at every count.")
st.info(f"Dataset: {describe_source(current_source())} · hub handle: {describe_handle(current_handle())}. Change "
        "them on the Dataset and Experiments pages.", icon=":material/info:")

# The measurement trains in the server itself: the preset's caps bound what the fields offer, and core checks
# them again (counts are typed, so the images held are checked once the dataset's classes are known).
preset = active_preset()
a, b, c = st.columns(3)
counts_text = a.text_input("Images per class", value="5, 10, 20, 40, 80",
                           help="Comma-separated counts; each class contributes at most this many training images.")
size = b.number_input("Image size (pixels, square)", min_value=48,
                      max_value=min(512, preset.max_efficiency_image_size or 512), value=64, step=16)
baseline_epochs = c.number_input("Baseline epochs", min_value=1, max_value=min(100, preset.max_epochs or 100),
                                 value=ARTICLE_EPOCHS[ModelKind.BASELINE])
if preset.max_efficiency_images is not None:
    st.caption(f"The {preset.name} preset measures on at most {preset.max_efficiency_images:,} training images "
               "(the largest count times the classes).")

if st.button("Measure", type="primary", icon=":material/play_arrow:"):
    from core.settings.errors import LabError
    from core.training.efficiency import data_efficiency

    try:
        counts = [int(part) for part in counts_text.replace(" ", "").split(",") if part]
    except ValueError:
        counts = []
    try:
        if not counts:
            raise LabError("Give the counts as whole numbers separated by commas, e.g. 5, 10, 20.")
        with st.status("Measuring ...") as status:
            data = DataConfig(source=current_source(), image_size=int(size),
                              batch_size=capped_batch_size(DataConfig.batch_size, preset))
            result = data_efficiency(data, current_handle(), counts, {ModelKind.BASELINE: int(baseline_epochs)},
                                     on_status=lambda message: status.update(label=public_text(message)),
                                     preset=preset)
            status.update(label="Measured", state="complete")
        st.session_state[RESULT_KEY] = result
    except Exception as exc:
        show_error(exc)

result = st.session_state.get(RESULT_KEY)
if result is None:
    st.stop()
st.plotly_chart(data_efficiency_chart(result), key="eff_chart")
rows = {result.labels[kind]: {f"{n} per class": percent(acc) for n, acc in result.accuracies(kind)}
        for kind in ModelKind}
st.table(rows)
