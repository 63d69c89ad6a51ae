"""Home: what the Lab reproduces, the article's numbers, where to start, and the current status."""
import streamlit as st

from app_pages.parts.common import chip, current_source, describe_source, network_online, public_text, runs_folder
from core.present.room import join_link, only_this_machine, qr_png
from core.settings.config import ModelKind, spec
from core.settings.paths import cache_dir
from core.settings.presets import active
from core.settings.reference import article_final_val_accuracy, article_params, article_trainable_params


def millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


st.title("Transfer Learning Lab")
st.markdown(
    "**Transfer learning** reuses a network that has already learned to see, here MobileNetV2 trained on "
    "1.4 million ImageNet photos, instead of learning from raw pixels again. Its frozen layers turn each "
    "image into 1,280 features, and only a small new layer is trained on top to tell your classes apart. "
    "That is why it needs far fewer images, epochs and minutes than a network trained from scratch, and "
    "still ends up more accurate."
)

st.subheader("The article's experiment")
st.caption("TFDS cats_vs_dogs, split 80/20, images resized to 224x224 and scaled to [0, 1], batches of 32.")
left, right = st.columns(2, gap="large")
with left, st.container(border=True):
    kind = ModelKind.BASELINE
    st.markdown(chip(kind) + ": trained from scratch", unsafe_allow_html=True)
    st.caption("Four Conv2D/MaxPool stages, Dropout, Dense(512) and a Dense output layer.")
    a, b, c = st.columns(3)
    a.metric("Parameters", millions(article_params(kind)), help=f"{article_params(kind):,}, all of them trained")
    b.metric("Epochs", spec(kind).article_epochs)
    c.metric("Val accuracy", f"≈{spec(kind).article_val_accuracy:.0%}",
             help=f"The article's text; its notebook printed {article_final_val_accuracy(kind):.1%} "
                  "after the last epoch.")
with right, st.container(border=True):
    kind = ModelKind.TRANSFER
    st.markdown(chip(kind) + ": frozen features + one Dense layer", unsafe_allow_html=True)
    st.caption("A TF Hub MobileNetV2 feature vector (not trained) and a Dense output layer (trained).")
    a, b, c = st.columns(3)
    trainable = article_trainable_params(kind)
    a.metric("Parameters", millions(article_params(kind)),
             help=f"{article_params(kind):,}, of which {trainable:,} are trained" if trainable else None)
    b.metric("Epochs", spec(kind).article_epochs)
    c.metric("Val accuracy", f"≈{spec(kind).article_val_accuracy:.0%}",
             help=f"The article's text; its notebook printed {article_final_val_accuracy(kind):.1%} "
                  "after the last epoch.")

st.subheader("Start here")
steps = st.columns(4, gap="medium")
with steps[0], st.container(border=True):
    st.page_link("app_pages/dataset.py", label="**1. Dataset**", icon=":material/photo_library:")
    st.caption("Pick cats_vs_dogs, another TFDS dataset, a folder or a zip of class folders; look at the "
               "images and how many each class has.")
with steps[1], st.container(border=True):
    st.page_link("app_pages/experiments.py", label="**2. Experiments**", icon=":material/monitoring:")
    st.caption("Train both models side by side with live curves beside the article's; the Quick demo "
               "preset fits both into a few minutes.")
with steps[2], st.container(border=True):
    st.page_link("app_pages/data_efficiency.py", label="**3. Data efficiency**", icon=":material/stacked_line_chart:")
    st.caption("Both models on 5 to 80 images per class: the fewer images, the more a pretrained backbone wins.")
with steps[3], st.container(border=True):
    st.page_link("app_pages/predict.py", label="**4. Predict**", icon=":material/image_search:")
    st.caption("Reload a saved model from its .h5 file and classify your own photos or the camera's.")

with st.expander("Join this room", icon=":material/qr_code_2:"):
    # The address without its query: the ?s= key there restores this session's choices and is its own.
    link = join_link(st.context.url, ("home",))
    if link is None:
        st.caption("Open the Lab in a browser to see the address others can join.")
    else:
        st.caption("Participants scan the code or type the address: each gets a session of their own on this "
                   "server, and their trained models appear on the Room page.")
        code, text = st.columns([1, 2], vertical_alignment="center")
        code.image(qr_png(link), caption="Scan to join", width=240)
        text.code(link, language=None, wrap_lines=True)
        if only_this_machine(link):
            text.warning("This address only works on this machine. Open the Lab by its network address "
                         "(the Network URL that `streamlit run` prints) and the code follows it.",
                         icon=":material/warning:")
        text.page_link("app_pages/room.py", label="Open the Room", icon=":material/groups:")

st.subheader("Status")
online = network_online()
status = st.columns(4)
status[0].markdown(f"**Dataset**  \n{describe_source(current_source())}")
preset = active()
# As in the sidebar: the server's folders are shown on a user's own machine, never on a public host.
shown = preset.preset.allow_local_paths
status[1].markdown("**Runs folder**  \n" + (f"`{runs_folder()}`" if shown else "on the server"))
status[2].markdown("**Cache folder**  \n" + (f"`{cache_dir()}`" if shown else "on the server"))
status[3].markdown("**Network**  \n" + ("Online" if online else "Offline"))
st.caption(f"**Preset: {preset.preset.name}** ({public_text(preset.reason)}). {preset.preset.description}")
if not online:
    st.info(
        "Offline: cats_vs_dogs and the TF Hub module can only be used if they are already in the cache "
        "folder. The Dataset page can generate a small demo dataset and pretrain a backbone for it here, so "
        "every page works without a network.", icon=":material/wifi_off:")
