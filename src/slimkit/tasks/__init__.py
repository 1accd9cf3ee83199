"""Tasks: Classifier / Detector / Segmenter with train, evaluate, predict, save; ``load_model``."""

from slimkit.tasks.base import BaseTask as BaseTask
from slimkit.tasks.classifier import Classifier as Classifier
from slimkit.tasks.detector import Detector as Detector
from slimkit.tasks.loading import load_model as load_model
from slimkit.tasks.segmenter import Segmenter as Segmenter
