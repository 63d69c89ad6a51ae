"""Dataset: choose where the images come from and look at them before anything trains."""
import streamlit as st

from app_pages.parts import session_keys as keys
from app_pages.parts.common import (
    current_source,
    describe_source,
    open_source_cached,
    public_text,
    set_handle,
    set_source,
    show_error,
)
from core.data.images import upscaling_note
from core.data.sources import SPLITS
from core.present.charts import class_counts_bar, image_size_scatter
from core.settings.config import ARTICLE_IMAGE_SIZE, DEFAULT_SOURCE
from core.settings.paths import cache_dir, uploads_dir
from core.settings.presets import active_preset
from core.settings.source import Source
from core.settings.text import markdown_literal

SAMPLES = 16
THUMB = 160
CHOICES = {
    "article": "cats_vs_dogs (TFDS, the article's)",
    "tfds": "Another TFDS dataset",
    "folder": "A folder on this machine",
    "zip": "Upload a zip",
    "demo": "Generated demo (works offline)",
}


@st.cache_data(show_spinner=False, max_entries=8, ttl=3600)
def overview(source: str) -> dict:
    from core.data.sources import TfdsSource

    opened = open_source_cached(source)
    return {"info": opened.info.to_dict(), "sizes": opened.image_sizes(),
            "sampled": isinstance(opened, TfdsSource)}


@st.cache_data(show_spinner=False, max_entries=16, ttl=3600)
def samples(source: str, seed: int) -> list:
    from PIL import Image, ImageOps

    tiles = []
    for image, label in open_source_cached(source).samples(SAMPLES, seed):
        # Square tiles make a tidy grid; the sizes chart shows the real shapes.
        tile = ImageOps.fit(Image.fromarray(image), (THUMB, THUMB), Image.Resampling.BILINEAR)
        tiles.append((tile, label))
    return tiles


def demo_source() -> str:
    """Write the demo dataset and pretrain its backbone into the cache folder (each once), showing progress."""
    from core.models.demo_backbone import TRAINING_SIZE, prepare_demo

    bar = st.progress(0.0, text="Preparing the generated demo ...")
    # The pretraining runs in a process of its own: the server only follows it.
    demo = prepare_demo(progress=lambda fraction, message: bar.progress(min(1.0, max(0.0, fraction)),
                                                                        text=public_text(message)),
                        separate_process=True)
    bar.empty()
    if demo.pretrain:
        st.toast(f"Demo backbone pretrained on {demo.pretrain.source_images:,} images of "
                 f"{demo.pretrain.source_classes} other shapes in {demo.pretrain.seconds:.0f} s.")
    set_handle(str(demo.backbone))
    st.session_state[keys.EXP_IMAGE_SIZE] = TRAINING_SIZE  # the size the demo was made for, not the article's
    return demo.source


def follow_download(name: str) -> None:
    """Show the one download of TFDS `name` (this session's, another's or the CLI's) until it is prepared.

    The work runs in its own process: a rerun or a closed tab stops only this view of it, Cancel stops it.
    """
    from core.data.downloads import preparation

    bar = st.progress(0.0, text=f"Checking TFDS '{name}' ...")
    st.button("Cancel download", key=keys.DL_CANCEL, icon=":material/cancel:")
    for status in preparation(name):
        bar.progress(status.fraction or 0.0, text=public_text(status.line()))


def unpack_upload(upload) -> str | None:
    from core.safety.zips import extract_zip

    cached = st.session_state.get(keys.DS_ZIP)
    if cached and cached[0] == upload.file_id:
        result = cached[1]
    else:
        with st.spinner(f"Unpacking {markdown_literal(upload.name)} ..."):
            result = extract_zip(upload, uploads_dir())
        st.session_state[keys.DS_ZIP] = (upload.file_id, result)
    skipped = sum(result.skipped.values())
    # Where it was unpacked is the server's business on a public host: the folder is only named locally.
    where = f" into `{result.root}`" if active_preset().allow_local_paths else ""
    st.caption(f"{'Already unpacked' if result.reused else 'Unpacked'}: {result.images:,} images{where}"
               + (f"; {skipped:,} other files left out." if skipped else "."))
    return result.source


st.title("Dataset")
st.caption("Both models learn from the dataset chosen here. Folders need one sub-folder of images per class "
           "(or train/ and val/ folders that each hold them); without a validation split, 20% of each class "
           "is held out, as in the article.")

loaded = st.session_state.get(keys.DS_LOADED)
start = current_source()
start_source = Source.parse(start)
# A public host must not let visitors read the server's folders: uploads, TFDS and the demo only.
choices = [c for c in CHOICES if c != "folder" or active_preset().allow_local_paths]
if st.session_state.get(keys.DS_CHOICE) not in choices:
    # No choice made in this session yet: the one that produced the current dataset.
    default_choice = ("article" if start == DEFAULT_SOURCE else "tfds" if start_source.is_tfds
                      else "demo" if start.startswith(str(Source.folder(cache_dir() / "demo")))
                      else "zip" if start.startswith(str(Source.folder(uploads_dir()))) else "folder")
    st.session_state[keys.DS_CHOICE] = default_choice if default_choice in choices else "zip"
choice = st.radio("Where do the images come from?", choices, format_func=CHOICES.get, horizontal=True,
                  key=keys.DS_CHOICE)

candidate = None
try:
    if choice == "article":
        candidate = DEFAULT_SOURCE
        st.caption("23,262 photos of cats and dogs; downloaded once (about 800 MB) into the cache folder.")
    elif choice == "tfds":
        name = st.text_input("TFDS dataset name", value=start_source.value if start_source.is_tfds and
                             start != DEFAULT_SOURCE else "tf_flowers",
                             help="Any TFDS image-classification dataset, e.g. tf_flowers, beans, rock_paper_scissors.")
        candidate = str(Source.tfds(name.strip())) if name.strip() else None
    elif choice == "folder":
        path = st.text_input("Folder path", value=start_source.value if start_source.is_folder else "",
                             placeholder="/data/pets  (holding cats/ and dogs/)")
        candidate = str(Source.folder(path.strip())) if path.strip() else None
    elif choice == "zip":
        upload = st.file_uploader("A zip of class folders (up to 200 MB)", type=["zip"])
        candidate = unpack_upload(upload) if upload else None
    else:
        st.caption("Hearts, crescents and arrows (200 images each) and a small CNN pretrained here, once, on 20 "
                   "other shapes, to use as the hub handle: a miniature of the article's experiment that works "
                   "offline. The first load pretrains it (1-2 minutes on 2 cores).")
        candidate = "demo"
except Exception as exc:
    show_error(exc)
    candidate = None

chosen = Source.parse(candidate) if candidate else None
tfds_name = chosen.value if chosen and chosen.is_tfds else None
downloading = False
if tfds_name:
    from core.data.downloads import cancel, is_running
    from core.settings.paths import tfds_dir

    downloading = is_running(tfds_dir(), tfds_name)
    if downloading and st.session_state.get(keys.DL_CANCEL):
        cancel(tfds_name, tfds_dir())
        downloading = False
        st.warning(f"Cancelled the download of TFDS '{tfds_name}'; its partial files were removed.",
                   icon=":material/cancel:")

load, reload, _ = st.columns([1, 1, 3])
if load.button("Load dataset", type="primary", disabled=candidate is None, width="stretch"):
    try:
        if candidate == "demo":
            candidate = demo_source()
        if tfds_name:
            follow_download(tfds_name)
        with st.status(f"Opening {describe_source(candidate)} ...") as status:
            open_source_cached(candidate, _progress=lambda message: status.update(label=public_text(message)))
            overview(candidate)
            status.update(label=f"Opened {describe_source(candidate)}", state="complete")
        set_source(candidate)
        st.session_state[keys.DS_LOADED] = candidate
        st.rerun()  # the sidebar, drawn before this page, names the new dataset
    except Exception as exc:
        show_error(exc)
elif downloading:
    st.info(f"TFDS '{tfds_name}' is being downloaded (by this or another session, or the command line). Press "
            "**Load dataset** to follow its progress.", icon=":material/download:")
    st.button("Cancel download", key=keys.DL_CANCEL, icon=":material/cancel:")
if loaded and reload.button("Reload from disk", width="stretch",
                            help="Read the folder again after adding or removing images."):
    open_source_cached.clear()
    overview.clear()
    samples.clear()

if not loaded:
    st.info(f"Experiments will use {describe_source(current_source())}. Press **Load dataset** to look at it "
            "first.", icon=":material/info:")
    st.stop()

try:
    with st.spinner(f"Reading {describe_source(loaded)} ..."):
        view = overview(loaded)
except Exception as exc:
    show_error(exc)
    st.stop()

info = view["info"]
skipped_total = sum(info["skipped"].values())
st.success(f"Experiments will train on {describe_source(loaded)}.", icon=":material/check_circle:")
st.page_link("app_pages/experiments.py", label="Go to Experiments", icon=":material/arrow_forward:")

cols = st.columns(4)
cols[0].metric("Classes", len(info["class_names"]))
for col, split in zip(cols[1:3], SPLITS):
    col.metric("Training images" if split == "train" else "Validation images", f"{sum(info['counts'][split].values()):,}")
cols[3].metric("Files skipped", f"{skipped_total:,}", help="Unreadable images and files that are not images "
               "are left out and counted, never fatal.")

left, right = st.columns(2, gap="large")
left.plotly_chart(class_counts_bar(info["counts"]), key=keys.DS_COUNTS_CHART)
right.plotly_chart(image_size_scatter(view["sizes"], sampled=view["sampled"]), key=keys.DS_SIZES_CHART)
for note in info["notes"]:
    st.caption(public_text(note))
model_side = int(st.session_state.get(keys.EXP_IMAGE_SIZE, ARTICLE_IMAGE_SIZE))
upscaled = upscaling_note([tuple(s) for s in view["sizes"]], model_side, sampled=view["sampled"])
if upscaled:
    st.info(upscaled, icon=":material/zoom_in:")
if skipped_total:
    with st.expander(f"{skipped_total:,} skipped files"):
        st.write(", ".join(f"{n:,} {reason}" for reason, n in info["skipped"].items()))
        st.code("\n".join(info["skipped_files"]) or "-", language=None)

head, button = st.columns([4, 1], vertical_alignment="bottom")
head.subheader("Sample images")
if button.button("Shuffle", icon=":material/shuffle:", width="stretch"):
    st.session_state[keys.DS_SAMPLE_SEED] = st.session_state.get(keys.DS_SAMPLE_SEED, 0) + 1
try:
    with st.spinner("Decoding samples ..."):
        tiles = samples(loaded, st.session_state.get(keys.DS_SAMPLE_SEED, 0))
except Exception as exc:
    show_error(exc)
    tiles = []
per_row = 8
for row in range(0, len(tiles), per_row):
    for col, (tile, label) in zip(st.columns(per_row), tiles[row:row + per_row]):
        col.image(tile, caption=label, width="stretch")
