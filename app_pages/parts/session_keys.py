"""Every st.session_state key and widget key the Lab uses, each declared once, with whether it persists.

A key that persists is saved with the session's choices (core.settings.choices, plain values only) and
brought back on a reload or in a second tab with the same address; a widget under such a key also keeps
its value while the user is on another page (keep_widget_state in common). Buttons, file uploaders and
cameras refuse values written to them, so their keys never persist.

Keys made while the page runs (a run's id, a counter) are declared as a Family: a fixed prefix and a rule
for what follows it. Pages write keys through these names, never as string literals:
tests/unit/test_session_keys.py fails on a key used but not declared here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from core.settings.specs import SPECS, ModelKind


@dataclass(frozen=True)
class Key:
    name: str
    persists: bool
    doc: str


@dataclass(frozen=True)
class Family:
    """Keys made at run time: prefix followed by text that fullmatches the regex rule."""
    prefix: str
    rule: str
    persists: bool
    doc: str

    def key(self, *parts) -> str:
        """The family's key for these parts, joined by "_": RUNS_PICKER.key(3) is "runs_picker_3"."""
        name = self.prefix + "_".join(str(p) for p in parts)
        if not self.owns(name):
            raise ValueError(f"{name!r} does not follow the rule of the {self.prefix}... keys ({self.rule})")
        return name

    def owns(self, name: str) -> bool:
        return name.startswith(self.prefix) and re.fullmatch(self.rule, name[len(self.prefix):]) is not None


KEYS: dict[str, Key] = {}
FAMILIES: list[Family] = []


def _key(name: str, persists: bool, doc: str) -> str:
    if name in KEYS or any(f.owns(name) for f in FAMILIES):
        raise ValueError(f"session key {name!r} declared twice")
    KEYS[name] = Key(name, persists, doc)
    return name


def _family(prefix: str, rule: str, persists: bool, doc: str) -> Family:
    family = Family(prefix, rule, persists, doc)
    if any(family.owns(name) for name in KEYS):
        raise ValueError(f"the {prefix}... keys take in a key declared on its own")
    FAMILIES.append(family)
    return family


def declared(name) -> Key | Family | None:
    """The declaration that name falls under, or None."""
    if not isinstance(name, str):
        return None
    return KEYS.get(name) or next((f for f in FAMILIES if f.owns(name)), None)


def persists(name) -> bool:
    """Whether the key is saved with the session's choices and brought back on a reload."""
    found = declared(name)
    return found is not None and found.persists


_RUN = r".+"  # a run's folder name or a job's id
_INDEX = r"\d+"  # a counter or an image's place on the page

# --- the whole Lab: the dataset, the hub handle and the session's own key ---------------------------
LAB_SOURCE = _key("lab_source", True, 'the dataset the pages train on ("tfds:NAME" / "folder:PATH")')
LAB_HANDLE = _key("lab_handle", True, "the hub handle the transfer model starts from")
LAB_TOKEN = _key("lab_token", False, "this browser session's key, in the address as ?s=: owns its trainings "
                 "and names its saved choices (the address brings it back, not the saved choices)")
LAB_ISSUED_AT = _key("lab_issued_at", True, "when this server issued the session's key: a key from an address "
                     "is taken only when the server holds choices for it, so every issued key has some")
LAB_SAVED_CHOICES = _key("lab_saved_choices", False, "the choices as last saved, to write only when they change")

# --- Dataset ----------------------------------------------------------------------------------------
DS_LOADED = _key("ds_loaded", True, "the source this session has opened on the Dataset page")
DS_CHOICE = _key("ds_choice", True, "where the images come from (article, TFDS, demo, zip, folder)")
DS_SAMPLE_SEED = _key("ds_sample_seed", True, "which sample images the Dataset page shows")
DS_ZIP = _key("ds_zip", False, "(upload id, extraction result): a rerun never unpacks the same upload again")
DL_CANCEL = _key("dl_cancel", False, "the Cancel download button")
DS_COUNTS_CHART = _key("ds_counts", False, "the class counts chart (an element key, never in session state)")
DS_SIZES_CHART = _key("ds_sizes", False, "the image sizes chart (an element key, never in session state)")

# --- Experiments: settings ---------------------------------------------------------------------------
MODEL_SETTINGS = ("epochs", "batch", "lr", "limit", "augment", "balance", "ft_epochs", "ft_lr")
MODEL_SETTING = _family(
    "exp_", rf"({'|'.join(s.key for s in SPECS.values())})_({'|'.join(MODEL_SETTINGS)})", True,
    "one model's training field: exp_<its spec's key letter>_<setting>, e.g. exp_b_epochs, exp_t_ft_lr")
EXP_IMAGE_SIZE = _key("exp_image_size", True, "the side every image is resized to (Experiments; set by the demo)")
EXP_BUDGET_MIN = _key("exp_budget_min", True, "the Quick demo preset's time budget for both models, in minutes")
EXP_SEED = _key("exp_seed", True, "the seed of the split, the shuffle and the weights")
EXP_T_HANDLE = _key("exp_t_handle", True, "the Experiments page's hub handle field, filled from lab_handle")
EXP_T_CACHE = _key("exp_t_cache", True, "whether the frozen backbone's features are computed once")
EXP_SHOW_ARTICLE = _key("exp_show_article", True, "whether the charts show the article's curves")
EXP_SHOW_REFERENCE = _key("exp_show_reference", True, "whether the charts show the article's reported accuracy")
EXP_NOTICE = _key("exp_notice", False, "(level, text, when) left by a button's callback, shown for 30 s")
RUN_BUTTON = _family("run_", "|".join([*(k.value for k in ModelKind), "both"]), False,
                     "the Run buttons: run_<model kind> and run_both")

# --- Experiments: results ----------------------------------------------------------------------------
EXP_SHOWN = _key("exp_shown", True, "run ids on the charts (plain state, kept across pages)")
EXP_SHOWN_NEXT = _key("exp_shown_next", True, "run ids to put on the charts at the next full run (show_runs_next)")
EXP_IMPORTED = _key("exp_imported", True, "ids of the runs this session imported: its own default picks, nobody else's")
# The run picker's key changes whenever the page, not the user, sets the runs: a message the browser sent
# before it saw the new runs carries the old widget's value, which would otherwise win over them.
RUNS_PICKER = _family("runs_picker_", _INDEX, False,
                      "the run picker: runs_picker_<generation>, a new widget each time the page sets the runs")
RUNS_PICKER_GENERATION = _key("runs_picker_generation", False, "the run picker's current generation")
RUN_IMPORT_ZIP = _key("run_import_zip", False, "the zipped run folder uploader")
RUN_IMPORT = _key("run_import", False, "the Import button")
RUN_IMPORT_NOTICE = _key("run_import_notice", False, "(level, text, warnings) left by the import button's callback")
RESULTS_ACC_CHART = _key("results_acc", False, "the accuracy chart (an element key)")
RESULTS_LOSS_CHART = _key("results_loss", False, "the loss chart (an element key)")
EVALUATE_BUTTON = _family("evaluate_", _RUN, False, "a run's Evaluate button: evaluate_<run id>")
CONFUSION_CHART = _family("confusion_", _RUN, False, "a run's confusion matrix (an element key): confusion_<run id>")
EXPORT_WANTED = _family("wanted_", _RUN, False, "set by an 'instead' offer: prepare this format on the next run "
                        "(wanted_<format>_<run id>)")
EXPORT_INSTEAD = _family("instead_", _RUN, False, "the 'Prepare ... instead' button: instead_<format>_<run id>")
EXPORT_REFUSED = _family("refused_", _RUN, False, "a refused format's button: refused_<format>_<run id>")
EXPORT_PREPARE = _family("prepare_", _RUN, False, "a format's Prepare button: prepare_<format>_<run id>")
DOWNLOAD = _family("download_", _RUN, False,
                   "download buttons: download_<format>_<run id>, and download_run_<run id> for the run's zip")

# --- Experiments: the Running now panel ---------------------------------------------------------------
EXP_FOLLOWING = _key("exp_following", True, "job ids this session follows (its own and the ones it joined)")
EXP_REUSED = _key("exp_reused", True, "runs handed back for the latest submission, charted with its new runs")
EXP_STOPPING = _key("exp_stopping", True, 'job ids this session asked to stop, shown as "Stopping ..." at once')
EXP_DELIVERED = _key("exp_delivered", True, "run folders of followed jobs already put on this session's charts: a "
                     "result is delivered once, however many reloads or tabs came in between")
EXP_SEEN_ENDED = _key("exp_seen_ended", True, "followed jobs seen ended: the first sight of an end reruns the "
                      "whole page once, so what a page draws from a finished job appears")
EXP_PANEL_LEVEL = _key("exp_panel_level", True, "the activity level the panel was last set to poll at")
PANEL_STOP_ERROR = _key("panel_stop_error", False, "(job id, message) when a Stop could not be written")
STOP_BUTTON = _family("stop_", _RUN, False, "a job's Stop / Cancel button: stop_<job id>")
LIVE_ACC_CHART = _key("live_acc", False, "the live accuracy chart (an element key)")
LIVE_LOSS_CHART = _key("live_loss", False, "the live loss chart (an element key)")

# --- Data efficiency ----------------------------------------------------------------------------------
EXP_EFFICIENCY_JOB = _key("exp_efficiency_job", True, "this session's latest measurement on the job board")
EXP_EFF_COUNTS = _key("exp_eff_counts", True, "the images per class to measure, as typed")
EXP_EFF_SIZE = _key("exp_eff_size", True, "the measurement's image size")
EXP_EFF_EPOCHS = _key("exp_eff_epochs", True, "the measurement's baseline epochs")
EFF_CHART = _key("eff_chart", False, "the data efficiency chart (an element key)")

# --- Your classes ---------------------------------------------------------------------------------------
EXP_OWN_JOB = _key("exp_own_job", True, "the training Your classes queued")
EXP_OWN_REUSED = _key("exp_own_reused", True, "runs handed back instead, when these classes were trained already")
OWN_CLASS = _key("own_class", False, "the class being filled")
OWN_SEEN = _key("own_seen", False, "file ids of snapshots and uploads already added: a rerun never adds one twice")
OWN_CAMERA_ROUND = _key("own_camera_round", False, "which camera widget is current (a new one after each add)")
OWN_UPLOAD_ROUND = _key("own_upload_round", False, "which uploader widget is current (a new one after each add)")
OWN_CAMERA = _family("own_cam_", _INDEX, False, "the camera: own_cam_<own_camera_round>")
OWN_UPLOAD = _family("own_up_", _INDEX, False, "the image uploader: own_up_<own_upload_round>")
OWN_FLASH = _key("own_flash", False, "(level, text) lines left for the next run to show")
OWN_WITH_BASELINE = _key("own_with_baseline", False, "whether the CNN from scratch is trained too")
OWN_NEW_NAME = _key("own_new_name", False, "the New class field")
OWN_RENAME = _key("own_rename", False, "the New name field of the chosen class")
OWN_STARTED = _key("own_started", False, "when this page's training was queued")
OWN_ADD_CLASS_FORM = _key("own_add_class", False, "the New class form (a form's key, never in session state)")
OWN_TRY = _key("own_try", False, "the button that opens the trained model on Predict")
OWN_REMOVE = _family("own_rm_", _RUN, False, "an image's Remove button: own_rm_<image id>")

# --- Predict --------------------------------------------------------------------------------------------
PRED_MODEL_SOURCE = _key("pred_model_source", True, "where the model comes from: run, upload or path")
PRED_RUN = _key("pred_run", True, "the saved run to predict with")
PRED_H5_PATH = _key("pred_h5_path", True, "the .h5 file path field")
PRED_CAMERA = _key("pred_camera", True, "whether the camera is on")
PRED_CLASS_NAMES = _key("pred_class_names", True, "names typed for a model that stores none, comma-separated")
PRED_METHOD = _family("pred_method_", _INDEX, True, "an image's explanation method: pred_method_<image's place>")
UP_MODEL = _key("up_model", False, "the .h5 model uploader")
UP_MODEL_STORED = _key("up_model_stored", False, "(upload id, stored path) of this session's uploaded model")
UP_CAMERA = _key("up_camera", False, "the camera")
UP_IMAGES = _key("up_images", False, "the image uploader")
EXPLANATIONS = _key("explanations", False, "this session's heatmaps by (model file, version, image, method)")
EXPLAIN_BUTTON = _family("explain_", _INDEX, False, "an image's Explain button: explain_<image's place>")
EXPLANATION_CHART = _family("explanation_", _INDEX, False, "an image's heatmap (an element key)")
PROBABILITY_CHART = _family("prob_", _INDEX, False, "an image's probabilities (an element key)")

# --- Room -----------------------------------------------------------------------------------------------
ROOM_NAME = _key("room_name", False, "the name field; the room's ledger keeps the name, not the session")
ROOM_NAME_ERROR = _key("room_name_error", False, "why the name was refused, shown once")
ROOM_CLEAR_PASSWORD = _key("room_clear_password", False, "the host password field")
ROOM_CLEARED = _key("room_cleared", False, "what the last click on Clear did, shown once")
ROOM_CLEAR = _key("room_clear", False, "the Clear the room button")
ROOM_PICK = _key("room_pick", False, "the model to try on Predict")
ROOM_TRY = _key("room_try", False, "the Open it on Predict button")
