// Parity of predicted probability vectors against the golden (Keras) ones, with the same metrics and gates as the
// Python exporter (exporter/validation/parity.py and tolerances.py). Foundation only: builds on Linux.
//
// Canonical copy: exporter/xcode/swift/Parity.swift. ios_harness/Sources/GoldenParity/ and the test target of every
// package `exporter xcode` writes carry identical copies (tests/test_xcode.py checks they do not drift).

import Foundation

/// A parity gate: the largest allowed |p_keras - p_converted| over every image and class, and the smallest allowed
/// fraction of images whose top-1 label agrees. nil means "not gated".
public struct Gate: Codable, Equatable {
    public var maxAbsProb: Double?
    public var minTop1: Double?

    public init(maxAbsProb: Double? = nil, minTop1: Double? = nil) {
        self.maxAbsProb = maxAbsProb
        self.minTop1 = minTop1
    }

    enum CodingKeys: String, CodingKey {
        case maxAbsProb = "max_abs_prob", minTop1 = "min_top1"
    }

    /// The same rule and wording as Python's `Gate.failures`. NaN never passes.
    public func failures(maxAbs: Double, top1: Double) -> [String] {
        var out: [String] = []
        if let limit = maxAbsProb, !(maxAbs <= limit) {
            out.append("max |dp| \(String(format: "%.3g", maxAbs)) > \(String(format: "%g", limit))")
        }
        if let limit = minTop1, !(top1 >= limit) {
            out.append("top-1 agreement \(String(format: "%.4f", top1)) < \(String(format: "%g", limit))")
        }
        return out
    }
}

/// The three numbers Python's validate reports per artifact.
public struct ParityMetrics: Equatable {
    public let images: Int
    /// Fraction of images whose argmax equals the golden argmax.
    public let top1Agreement: Double
    /// Largest |p_golden - p_predicted| over every image and class.
    public let maxAbsProb: Double
    /// Mean over images of the mean |p_golden - p_predicted| over classes.
    public let meanAbsProb: Double
}

/// What a comparison found. `passed` follows the gate, as in Python; `failures` lists everything wrong, one line each.
public struct ParityReport: CustomStringConvertible {
    /// An image whose top-1 label differs from the golden one.
    public struct Flip: Equatable {
        public let image: String
        public let golden: String
        public let predicted: String
    }

    /// An image whose largest |dp| is over the gate's max_abs_prob.
    public struct Deviation: Equatable {
        public let image: String
        public let label: String
        public let maxAbsProb: Double
    }

    public let gate: Gate
    public let metrics: ParityMetrics
    /// Aggregate gate failures, worded as Python words them.
    public let gateFailures: [String]
    /// Inputs that cannot be compared: a missing, extra, wrong-length or non-finite prediction. Each one fails.
    public let problems: [String]
    public let flips: [Flip]
    public let deviations: [Deviation]

    /// True when every prediction could be compared and the aggregate metrics pass the gate. A gate whose min_top1
    /// is below 1 may pass with a few flipped images; they are still listed in `flips` and `failures`.
    public var passed: Bool { problems.isEmpty && gateFailures.isEmpty }

    /// Every failure: problems, gate failures, then each flipped or out-of-tolerance image.
    public var failures: [String] {
        problems + gateFailures
            + flips.map { "\($0.image): top-1 \($0.predicted), golden \($0.golden)" }
            + deviations.map { "\($0.image): |dp| \(String(format: "%.3g", $0.maxAbsProb)) at label \($0.label)" }
    }

    public var description: String {
        let m = metrics
        let head = "\(passed ? "PASSED" : "FAILED"): \(m.images) images, top-1 agreement "
            + String(format: "%.4f, max |dp| %.3g, mean |dp| %.3g", m.top1Agreement, m.maxAbsProb, m.meanAbsProb)
        return ([head] + failures.map { "  " + $0 }).joined(separator: "\n")
    }
}

public enum Parity {
    /// Index of the largest value; the first one on ties, as numpy's argmax.
    public static func argmax(_ values: [Double]) -> Int {
        var best = 0
        for i in values.indices.dropFirst() where values[i] > values[best] {
            best = i
        }
        return best
    }

    /// Compare `predictions` (image file -> probabilities in the golden label order) with the golden file under
    /// `gate`. Every golden image needs exactly one prediction.
    public static func compare(_ golden: GoldenFile, predictions: [String: [Double]], gate: Gate) -> ParityReport {
        var problems: [String] = []
        var pairs: [(image: String, golden: [Double], predicted: [Double])] = []
        for image in golden.images {
            guard let got = predictions[image.file] else {
                problems.append("\(image.file): no prediction")
                continue
            }
            guard got.count == golden.labels.count else {
                problems.append("\(image.file): \(got.count) probabilities for \(golden.labels.count) labels")
                continue
            }
            guard got.allSatisfy({ $0.isFinite }) else {
                problems.append("\(image.file): prediction is not finite")
                continue
            }
            pairs.append((image.file, image.probabilities, got))
        }
        let known = Set(golden.images.map(\.file))
        for file in predictions.keys.sorted() where !known.contains(file) {
            problems.append("\(file): prediction for an image the golden file does not list")
        }
        if pairs.isEmpty {
            problems.append("no image could be compared")
        }

        var agree = 0
        var maxAbs = 0.0
        var absSum = 0.0
        var flips: [ParityReport.Flip] = []
        var deviations: [ParityReport.Deviation] = []
        for pair in pairs {
            let diff = zip(pair.golden, pair.predicted).map { abs($0 - $1) }
            let topGolden = argmax(pair.golden)
            let topPredicted = argmax(pair.predicted)
            if topGolden == topPredicted {
                agree += 1
            } else {
                flips.append(.init(image: pair.image, golden: golden.labels[topGolden],
                                   predicted: golden.labels[topPredicted]))
            }
            let worst = argmax(diff)
            maxAbs = max(maxAbs, diff[worst])
            absSum += diff.reduce(0, +) / Double(diff.count)
            if let limit = gate.maxAbsProb, diff[worst] > limit {
                deviations.append(.init(image: pair.image, label: golden.labels[worst], maxAbsProb: diff[worst]))
            }
        }
        let count = pairs.count
        let metrics = ParityMetrics(images: count, top1Agreement: count > 0 ? Double(agree) / Double(count) : .nan,
                                    maxAbsProb: count > 0 ? maxAbs : .nan,
                                    meanAbsProb: count > 0 ? absSum / Double(count) : .nan)
        return ParityReport(gate: gate, metrics: metrics,
                            gateFailures: gate.failures(maxAbs: metrics.maxAbsProb, top1: metrics.top1Agreement),
                            problems: problems, flips: flips, deviations: deviations)
    }
}
