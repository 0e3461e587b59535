import Foundation
import XCTest
@testable import GoldenParity

final class GoldenFileTests: XCTestCase {
    func testParsesEveryField() throws {
        let golden = try Fixture.golden()
        XCTAssertEqual(golden.schemaVersion, 1)
        XCTAssertEqual(golden.labels, Fixture.labels)
        XCTAssertEqual(golden.source.file, "model.keras")
        XCTAssertEqual(golden.artifacts.first?.variant, "fp16")
        XCTAssertEqual(golden.preprocessing.inputSize, [32, 32])
        XCTAssertEqual(golden.preprocessing.resize, "stretch")
        XCTAssertTrue(golden.preprocessing.inModel)
        XCTAssertEqual(golden.imageFormat, GoldenImageFormat(type: "png", color: "RGB", bitDepth: 8, height: 32,
                                                             width: 32))
        XCTAssertEqual(try golden.gate(for: "fp16"), Gate(maxAbsProb: 2e-2, minTop1: 0.99))
        XCTAssertEqual(try golden.gate(for: "fp32"), Gate(maxAbsProb: 1e-5, minTop1: nil))
        XCTAssertEqual(try golden.gate(for: "int8"), Gate(maxAbsProb: nil, minTop1: 0.98))
        XCTAssertEqual(golden.images.count, 4)
        XCTAssertEqual(golden.images[1].file, "images/0001.png")
        XCTAssertEqual(golden.images[1].kerasTopLabel, "dog")
        XCTAssertEqual(golden.images[1].probabilities, [0.1, 0.8, 0.1])
        XCTAssertEqual(golden.consistencyProblems(), [])
    }

    func testLoadsFromAFolder() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        try Fixture.data().write(to: folder.appendingPathComponent("golden.json"))
        let golden = try GoldenFile.load(from: folder)
        XCTAssertEqual(golden.url(of: golden.images[0], in: folder).lastPathComponent, "0000.png")
        XCTAssertThrowsError(try GoldenFile.load(from: folder.appendingPathComponent("missing"))) { error in
            XCTAssertTrue("\(error)".contains("golden.json: cannot be read"), "\(error)")
        }
    }

    func testRefusesAnotherSchemaVersion() {
        let data = Fixture.data { $0["schema_version"] = 2 }
        XCTAssertThrowsError(try GoldenFile.decode(data)) { error in
            XCTAssertEqual("\(error)", "golden.json: schema_version must be 1, got 2; regenerate it with this exporter "
                + "or update the reader")
        }
    }

    func testNamesAMissingKey() {
        XCTAssertThrowsError(try GoldenFile.decode(Fixture.data { $0["labels"] = nil })) { error in
            XCTAssertEqual("\(error)", "golden.json: missing key labels at top level")
        }
        let data = Fixture.data { Fixture.changeImage(&$0, 2) { $0["probabilities"] = nil } }
        XCTAssertThrowsError(try GoldenFile.decode(data)) { error in
            XCTAssertEqual("\(error)", "golden.json: missing key probabilities at images[2]")
        }
    }

    func testRefusesAVectorOfTheWrongLength() {
        let data = Fixture.data { Fixture.changeImage(&$0, 1) { $0["probabilities"] = [0.5, 0.5] } }
        XCTAssertThrowsError(try GoldenFile.decode(data)) { error in
            XCTAssertEqual("\(error)", "golden.json: image images/0001.png has 2 probabilities for 3 labels")
        }
    }

    func testRefusesATopIndexThatDoesNotNameItsLabel() {
        let data = Fixture.data { Fixture.changeImage(&$0, 0) { $0["keras_top_index"] = 7 } }
        XCTAssertThrowsError(try GoldenFile.decode(data)) { error in
            XCTAssertTrue("\(error)".contains("keras_top_index 7 does not name label cat"), "\(error)")
        }
    }

    func testRefusesImagePathsOutsideTheFolder() {
        let data = Fixture.data { Fixture.changeImage(&$0, 0) { $0["file"] = "../secret.png" } }
        XCTAssertThrowsError(try GoldenFile.decode(data)) { error in
            XCTAssertTrue("\(error)".contains("must stay inside the golden folder"), "\(error)")
        }
    }

    func testConsistencyFindsABadSumAndATopLabelThatIsNotTheArgmax() throws {
        let data = Fixture.data(rows: [[0.7, 0.2, 0.1], [0.1, 0.8, 0.3], [0.05, 0.15, 0.8]]) { object in
            Fixture.changeImage(&object, 2) { $0["keras_top_index"] = 1; $0["keras_top_label"] = "dog" }
        }
        let golden = try GoldenFile.decode(data)
        XCTAssertEqual(golden.consistencyProblems(), [
            "images/0001.png: probabilities sum to 1.2, not 1",
            "images/0002.png: keras_top_label dog is not the most probable label fox",
        ])
    }

    func testUnknownVariantHasNoGate() throws {
        XCTAssertThrowsError(try Fixture.golden().gate(for: "fp8")) { error in
            XCTAssertEqual("\(error)", "golden.json: no tolerance for variant fp8; known: fp16, fp32, int8")
        }
    }
}

final class ParityTests: XCTestCase {
    let fp16 = Gate(maxAbsProb: 2e-2, minTop1: 0.99)

    func testGoldenAgainstItselfPassesEveryGate() throws {
        let golden = try Fixture.golden()
        for (variant, gate) in golden.tolerances {
            let report = Parity.compare(golden, predictions: golden.probabilitiesByFile, gate: gate)
            XCTAssertTrue(report.passed, "\(variant): \(report)")
            XCTAssertEqual(report.failures, [])
            XCTAssertEqual(report.metrics, ParityMetrics(images: 4, top1Agreement: 1, maxAbsProb: 0, meanAbsProb: 0))
        }
    }

    func testMetricsAreThoseOfPython() throws {
        let golden = try Fixture.golden()
        var predicted = golden.probabilitiesByFile
        predicted["images/0000.png"] = [0.66, 0.24, 0.1]  // |dp| 0.04, 0.04, 0: mean 0.08 / 3
        predicted["images/0003.png"] = [0.3, 0.5, 0.2]  // flipped; |dp| 0.2, 0.2, 0: mean 0.4 / 3
        let report = Parity.compare(golden, predictions: predicted, gate: Gate())
        XCTAssertEqual(report.metrics.images, 4)
        XCTAssertEqual(report.metrics.top1Agreement, 0.75)
        XCTAssertEqual(report.metrics.maxAbsProb, 0.2, accuracy: 1e-12)
        XCTAssertEqual(report.metrics.meanAbsProb, (0.08 / 3 + 0.4 / 3) / 4, accuracy: 1e-12)
        XCTAssertTrue(report.passed)  // an empty gate gates nothing
    }

    func testAPerturbedVectorFailsTheProbabilityGate() throws {
        let golden = try Fixture.golden()
        var predicted = golden.probabilitiesByFile
        predicted["images/0002.png"] = [0.1, 0.17, 0.73]  // same top label; |dp| 0.05, 0.02, 0.07
        let report = Parity.compare(golden, predictions: predicted, gate: fp16)
        XCTAssertFalse(report.passed)
        XCTAssertEqual(report.gateFailures, ["max |dp| 0.07 > 0.02"])
        XCTAssertEqual(report.flips, [])
        XCTAssertEqual(report.deviations.map(\.image), ["images/0002.png"])
        XCTAssertEqual(report.failures, ["max |dp| 0.07 > 0.02", "images/0002.png: |dp| 0.07 at label fox"])
        XCTAssertTrue(report.description.hasPrefix("FAILED: 4 images, top-1 agreement 1.0000, max |dp| 0.07"))
        // A top-1-only gate does not look at probabilities.
        XCTAssertTrue(Parity.compare(golden, predictions: predicted, gate: try golden.gate(for: "int8")).passed)
        XCTAssertFalse(Parity.compare(golden, predictions: predicted, gate: try golden.gate(for: "fp32")).passed)
    }

    func testALabelFlipFailsTheTop1Gate() throws {
        let golden = try Fixture.golden()
        var predicted = golden.probabilitiesByFile
        predicted["images/0000.png"] = [0.4, 0.41, 0.19]
        let report = Parity.compare(golden, predictions: predicted, gate: try golden.gate(for: "int8"))
        XCTAssertFalse(report.passed)
        XCTAssertEqual(report.gateFailures, ["top-1 agreement 0.7500 < 0.98"])
        XCTAssertEqual(report.flips, [.init(image: "images/0000.png", golden: "cat", predicted: "dog")])
        XCTAssertTrue(report.failures.contains("images/0000.png: top-1 dog, golden cat"))
        let fp16Report = Parity.compare(golden, predictions: predicted, gate: fp16)
        XCTAssertEqual(fp16Report.gateFailures, ["max |dp| 0.3 > 0.02", "top-1 agreement 0.7500 < 0.99"])
    }

    func testATop1GateBelowOneAllowsAFewFlipsButListsThem() throws {
        let rows = (0..<100).map { i -> [Double] in i % 2 == 0 ? [0.6, 0.3, 0.1] : [0.2, 0.1, 0.7] }
        let golden = try Fixture.golden(rows: rows)
        var predicted = golden.probabilitiesByFile
        predicted["images/0010.png"] = [0.3, 0.6, 0.1]
        let one = Parity.compare(golden, predictions: predicted, gate: Gate(minTop1: 0.98))
        XCTAssertTrue(one.passed, "\(one)")
        XCTAssertEqual(one.metrics.top1Agreement, 0.99)
        XCTAssertEqual(one.flips.map(\.image), ["images/0010.png"])
        for i in [20, 30] {
            predicted[String(format: "images/%04d.png", i)] = [0.3, 0.6, 0.1]
        }
        let three = Parity.compare(golden, predictions: predicted, gate: Gate(minTop1: 0.98))
        XCTAssertFalse(three.passed)
        XCTAssertEqual(three.flips.count, 3)
    }

    func testMissingExtraWrongLengthAndNonFinitePredictionsFail() throws {
        let golden = try Fixture.golden()
        var predicted = golden.probabilitiesByFile
        predicted["images/0000.png"] = nil
        predicted["images/0001.png"] = [0.5, 0.5]
        predicted["images/0002.png"] = [Double.nan, 0.2, 0.8]
        predicted["images/9999.png"] = [0.2, 0.3, 0.5]
        let report = Parity.compare(golden, predictions: predicted, gate: Gate(minTop1: 0.5))
        XCTAssertFalse(report.passed)
        XCTAssertEqual(report.problems, [
            "images/0000.png: no prediction",
            "images/0001.png: 2 probabilities for 3 labels",
            "images/0002.png: prediction is not finite",
            "images/9999.png: prediction for an image the golden file does not list",
        ])
        XCTAssertEqual(report.metrics.images, 1)
        let none = Parity.compare(golden, predictions: [:], gate: Gate(minTop1: 0.5))
        XCTAssertFalse(none.passed)
        XCTAssertTrue(none.problems.contains("no image could be compared"))
        XCTAssertTrue(none.metrics.top1Agreement.isNaN)
    }

    func testGateWordingAndNaNFollowPython() {
        XCTAssertEqual(fp16.failures(maxAbs: 0.0312345, top1: 0.95),
                       ["max |dp| 0.0312 > 0.02", "top-1 agreement 0.9500 < 0.99"])
        XCTAssertEqual(Gate(maxAbsProb: 1e-5).failures(maxAbs: 2.5e-5, top1: 1), ["max |dp| 2.5e-05 > 1e-05"])
        XCTAssertEqual(fp16.failures(maxAbs: 0.02, top1: 0.99), [])  // the bounds themselves pass
        XCTAssertEqual(fp16.failures(maxAbs: .nan, top1: .nan).count, 2)
    }

    func testArgmaxTakesTheFirstOfEqualValuesLikeNumpy() {
        XCTAssertEqual(Parity.argmax([0.2, 0.4, 0.4]), 1)
        XCTAssertEqual(Parity.argmax([0.9]), 0)
    }
}
